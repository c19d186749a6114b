"""Charliecloud: ``ch-image pull`` once per host into faice's cache, ``ch-run`` as the invoking
user, fully unprivileged.

``ch-run`` has no daemon, no container record and no memory limit: a batch is its process
group; as root faice puts it into a memory cgroup of its own (the plan says where it cannot).
The image lives in a ``ch-image`` storage directory below :func:`image_cache`, pulled under a
host-wide lock. ``ch-run`` 0.31 binds only onto paths that exist in the (read-only) image, so
faice adds an empty ``/cc`` to the image once and binds a per-batch skeleton of the mount
points there first. It also binds read-write only: inputs are protected by their file modes.
Environment variables reach the command through ``ch-run``'s own environment (faice sets all
of it), never as ``--set-env`` arguments.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import tempfile
from pathlib import Path

from faice.errors import EngineError
from faice.runtime.cgroups import MemoryCgroup
from faice.runtime.containers import ContainerHandle, ContainerSpec, ImageInfo
from faice.runtime.process import ProcessRuntime, RuntimeCommand, _Batch, program_environment

SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CH_ERROR = re.compile(r"ch-run\[\d+\]: error: (.*)")


def storage_name(ref: str) -> str:
    """The directory ``ch-image`` stores ``ref`` under (its own rule: ``/``→``%``, ``:``→``+``)."""
    return ref.replace("/", "%").replace(":", "+")


class CharliecloudRuntime(ProcessRuntime):
    name = "charliecloud"
    program = "ch-run"

    @property
    def storage(self) -> Path:
        return self.cache / "storage"

    def skeleton(self, spec: ContainerSpec) -> Path:
        return Path(tempfile.gettempdir()) / f"faice-ch-{os.geteuid()}-{spec.name or spec.batch_id}"

    def command(self, spec: ContainerSpec, cgroup: MemoryCgroup | None) -> RuntimeCommand:
        argv = [self.program, "--bind", f"{self.skeleton(spec)}:/cc"]
        for host, target, _mode in sorted(spec.binds, key=lambda b: b[1].count("/")):
            argv += ["--bind", f"{host}:{target}"]
        argv += ["--cd", spec.workdir, spec.image, "--", *spec.command]
        user = pwd.getpwuid(os.geteuid())
        env = {"PATH": SYSTEM_PATH, **_image_environment(Path(spec.image)), "USER": user.pw_name,
               "HOME": user.pw_dir, **spec.environment}
        if spec.gpu_ids:  # every device is visible to ch-run: CUDA sees only the batch's own
            env["CUDA_VISIBLE_DEVICES"] = env["NVIDIA_VISIBLE_DEVICES"] = ",".join(spec.gpu_ids)
        return RuntimeCommand(argv, env)

    def create(self, spec: ContainerSpec) -> ContainerHandle:
        for _host, target, _mode in spec.binds:
            if not target.startswith("/cc/") and not (Path(spec.image) / target.lstrip("/")).exists():
                raise EngineError(f"charliecloud: {target} does not exist in the image; ch-run binds only "
                                  "onto existing paths (or below /cc)")
        handle = super().create(spec)
        skeleton = self.skeleton(spec)
        shutil.rmtree(skeleton, ignore_errors=True)
        skeleton.mkdir(mode=0o755, parents=True)
        for host, target, _mode in spec.binds:
            if target.startswith("/cc/"):
                point = skeleton / target.removeprefix("/cc/")
                if Path(host).is_dir():
                    point.mkdir(parents=True, exist_ok=True)
                else:
                    point.parent.mkdir(parents=True, exist_ok=True)
                    point.touch()
        return handle

    def after_remove(self, handle: ContainerHandle, batch: _Batch) -> None:
        shutil.rmtree(self.skeleton(batch.spec), ignore_errors=True)

    def _ch_image(self) -> list[str]:
        """``ch-image`` run by the system's Python: its ``#!/usr/bin/env python3`` would pick a
        virtualenv's Python (without lark) first on PATH."""
        found = shutil.which("ch-image") or shutil.which("ch-image", path=SYSTEM_PATH)
        if not found:
            raise EngineError("ch-image is not installed on this host (container.engine charliecloud)",
                              hint="install Charliecloud (Debian: charliecloud-builders, python3-lark)")
        python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else "python3"
        return [python, found, "--no-cache", "--storage", str(self.storage)]

    def image_path(self, ref: str) -> str:
        return str(self.storage / "img" / storage_name(ref))

    def find_image(self, ref: str) -> ImageInfo | None:
        path = Path(self.image_path(ref))
        if not (path / "cc").is_dir():  # the mark of a finished pull (see fetch_image)
            return None
        return ImageInfo(ref, str(path), None, "")

    def fetch_image(self, ref: str, auth: dict | None) -> ImageInfo:
        env = {**program_environment("CH_", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"), "PATH": SYSTEM_PATH}
        password = None
        argv = [*self._ch_image(), "pull"]
        if auth:
            password = str(auth.get("password", auth.get("_password", "")))
            env["CH_IMAGE_USERNAME"] = str(auth.get("username", auth.get("_username", "")))
            env["CH_IMAGE_PASSWORD"] = password
            argv.insert(-1, "--auth")
        self.cache.mkdir(parents=True, exist_ok=True)  # the storage itself is made by ch-image
        self.run_program([*argv, ref], env=env, secret=password)
        path = Path(self.image_path(ref))
        if not path.is_dir():
            raise EngineError(f"ch-image pull {ref} left no image at {path}")
        (path / "cc").mkdir(exist_ok=True)
        return ImageInfo(ref, str(path), None, "")

    def runtime_error(self, code: int, stderr: str) -> str | None:
        errors = [m.group(1) for m in map(CH_ERROR.search, stderr.splitlines()) if m]
        if code == 1 and errors and "can't execve" not in errors[-1]:
            return "ch-run: " + errors[-1]
        return None


def _image_environment(image: Path) -> dict[str, str]:
    """The image's own ``ENV`` (``ch-image`` keeps it in ``ch/environment``)."""
    found: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in (image / "ch" / "environment").read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                found[key] = value
    return found

