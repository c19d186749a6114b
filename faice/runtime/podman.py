"""Podman through its own command line (rootful or rootless), not the Docker-compatible API.

Podman 4.x's compatible API ignores GPU requests and reports no ``OOMKilled``; its CLI takes
GPUs by CDI (``--device nvidia.com/gpu=<UUID>``). A batch is one ``podman run --rm``
process: ``--sig-proxy`` passes faice's SIGTERM to the command, ``podman stop``/``kill``/
``rm`` act on the container by name when the client alone would not reach it. The RAM limit
is set on a cgroup of faice's (``--cgroup-parent``) where faice may create one, so the
kernel's counters tell an OOM kill (Podman 4.3 on cgroup v1 does not); elsewhere Podman's
``--memory`` enforces it and an unexplained SIGKILL under it counts as the OOM killer.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
from base64 import b64encode
from pathlib import Path

from faice import __version__
from faice.runtime.cgroups import MemoryCgroup, remove_stale_cgroups
from faice.runtime.containers import (
    LABEL_BATCH,
    LABEL_KEEP,
    LABEL_OWNER,
    LABEL_RUN,
    LABEL_VERSION,
    ContainerHandle,
    ContainerSpec,
    ImageInfo,
)
from faice.runtime.docker import _foreign, owner_alive, owner_token, repo_digest
from faice.runtime.process import (
    ProcessRuntime,
    RuntimeCommand,
    _Batch,
    end_batch_groups,
    end_orphaned_groups,
    program_environment,
)

PODMAN_ERROR = 125  # podman's own failure (126/127: the command could not be run)


def registry_of(ref: str) -> str:
    first = ref.split("/", 1)[0]
    return first if "/" in ref and ("." in first or ":" in first or first == "localhost") else "docker.io"


@contextlib.contextmanager
def auth_file(ref: str, auth: dict | None, *, account_logins: bool = True):
    """A private ``auth.json`` for one pull (the password never on a command line), removed
    after; an empty one where the account's stored logins must not serve (an agency)."""
    if not auth and account_logins:
        yield None
        return
    auths = {}
    if auth:
        user = str(auth.get("username", auth.get("_username", "")))
        password = str(auth.get("password", auth.get("_password", "")))
        auths[registry_of(ref)] = {"auth": b64encode(f"{user}:{password}".encode()).decode()}
    with tempfile.TemporaryDirectory(prefix="faice-auth-") as private:
        path = Path(private) / "auth.json"
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            json.dump({"auths": auths}, handle)
        yield path


class PodmanRuntime(ProcessRuntime):
    name = "podman"
    program = "podman"
    faice_moves_pid = False  # Podman makes the container's cgroup below --cgroup-parent

    def command(self, spec: ContainerSpec, cgroup: MemoryCgroup | None) -> RuntimeCommand:
        argv = [self.program, "run", "--rm", "--pull", "never", "--network", "host", "--log-driver", "none",
                "--init"]  # catatonit as PID 1 passes SIGTERM on: a stop ends the program promptly
        if spec.name:
            argv += ["--name", spec.name]
        labels = {LABEL_RUN: spec.run_id, LABEL_BATCH: spec.batch_id, LABEL_VERSION: __version__,
                  LABEL_OWNER: owner_token(), **({LABEL_KEEP: "1"} if spec.keep else {})}
        for key, value in labels.items():
            argv += ["--label", f"{key}={value}"]
        for host, target, mode in spec.binds:
            argv += ["--volume", f"{host}:{target}:{mode}"]
        argv += ["--workdir", spec.workdir]
        if spec.user is not None:
            argv += ["--user", spec.user]
        for name in spec.environment:
            argv += ["--env", name]  # the value comes from podman's own environment
        if cgroup is not None:
            argv += ["--cgroup-parent", cgroup.relative]
        elif spec.ram_mb:
            argv += ["--memory", f"{int(spec.ram_mb)}m", "--memory-swap", f"{int(spec.ram_mb)}m"]
        for gpu in spec.gpu_ids:
            argv += ["--device", f"nvidia.com/gpu={gpu}"]
        argv += [spec.image, *spec.command]
        return RuntimeCommand(argv, {**program_environment("CONTAINERS_", "CONTAINER_", "REGISTRY_AUTH_FILE"),
                                     **spec.environment})

    def find_image(self, ref: str) -> ImageInfo | None:
        try:
            result = subprocess.run([self.program, "image", "inspect", ref], capture_output=True, text=True,
                                    timeout=120, stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            return None
        if result.returncode != 0:
            return None
        found = json.loads(result.stdout)[0]
        user = (found.get("Config") or {}).get("User") or ""
        return ImageInfo(ref, found["Id"], repo_digest(ref, found.get("RepoDigests") or []), user)

    def fetch_image(self, ref: str, auth: dict | None) -> ImageInfo:
        with auth_file(ref, auth, account_logins=self.account_logins) as path:
            self.run_program([self.program, "pull", "--quiet", *(["--authfile", str(path)] if path else []), ref],
                             secret=str((auth or {}).get("password", (auth or {}).get("_password", ""))) or None)
        info = self.find_image(ref)
        if info is None:
            from faice.errors import EngineError

            raise EngineError(f"podman pull {ref} succeeded but the image is not there")
        return info

    def runtime_error(self, code: int, stderr: str) -> str | None:
        if code != PODMAN_ERROR:
            return None
        lines = [line for line in stderr.splitlines() if line.strip()]
        return "podman: " + (lines[-1] if lines else f"exit code {code}")

    def oom_without_cgroup(self, batch: _Batch, code: int) -> bool:
        return code == 137 and bool(batch.spec.ram_mb) and not batch.signalled

    def after_remove(self, handle: ContainerHandle, batch: _Batch) -> None:
        """``--rm`` removed a container that ended by itself; one faice stopped may remain."""
        code = batch.process.returncode if batch.process is not None else None
        if batch.signalled or code in (None, PODMAN_ERROR) or (code is not None and code < 0):
            self._podman("rm", "--force", "--ignore", "--time", "0", handle.name)

    def stop(self, handle: ContainerHandle, grace: float) -> None:
        self._batch(handle).signalled = True  # its 137/143 is faice's doing, not the OOM killer's
        self._podman("stop", "--ignore", "--time", str(int(grace)), handle.name)
        super().stop(handle, 1)

    def kill(self, handle: ContainerHandle) -> None:
        self._batch(handle).signalled = True
        self._podman("kill", handle.name)
        super().kill(handle)

    def _podman(self, *args: str) -> None:
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            subprocess.run([self.program, *args], capture_output=True, timeout=60, stdin=subprocess.DEVNULL)

    def remove_leftovers(self) -> list[str]:
        """Containers of faice processes that died (SIGKILL): their owner token says so."""
        try:
            result = subprocess.run([self.program, "ps", "--all", "--filter", f"label={LABEL_RUN}", "--format", "json"],
                                    capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired):
            return []
        removed = end_orphaned_groups()
        for container in json.loads(result.stdout or "[]") if result.returncode == 0 else []:
            labels = container.get("Labels") or {}
            token = labels.get(LABEL_OWNER)
            if labels.get(LABEL_KEEP) == "1" or not token or owner_alive(token):
                continue
            name = (container.get("Names") or [container.get("Id", "")])[0]
            self._podman("rm", "--force", "--ignore", "--time", "0", name)
            removed.append(name)
        return [*removed, *remove_stale_cgroups(settle_s=5.0 if removed else 0.0)]

    def remove_batch(self, batch_id: str) -> list[str]:
        """Batch ``batch_id``'s containers (by label) and process groups, whichever faice ran it."""
        try:
            result = subprocess.run([self.program, "ps", "--all", "--filter", f"label={LABEL_BATCH}={batch_id}",
                                     "--format", "json"],
                                    capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired):
            return end_batch_groups(batch_id)
        removed = end_batch_groups(batch_id)
        for container in json.loads(result.stdout or "[]") if result.returncode == 0 else []:
            if (container.get("Labels") or {}).get(LABEL_BATCH) != batch_id:
                continue
            name = (container.get("Names") or [container.get("Id", "")])[0]
            self._podman("rm", "--force", "--ignore", "--time", "0", name)
            removed.append(name)
        return removed

    def reclaim(self, path: Path, image: str, run_id: str) -> None:
        """Rootful: a chown. Rootless: files of the image's user belong to a subordinate uid,
        which only ``podman unshare`` (the user's own namespace) may give back."""
        path = Path(path)
        if self.owner[0] != 0 and path.exists() and _foreign(path, self.owner[0]):
            self.run_program([self.program, "unshare", "chown", "-R", "0:0", str(path)])
        super().reclaim(path, image, run_id)
