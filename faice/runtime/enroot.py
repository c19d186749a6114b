"""Enroot: ``enroot import`` once per image into a SquashFS file under a lock, ``enroot start``
per batch (Linux ≥ 4.18 starts the image directly, with fuse-overlayfs and squashfuse).

Written to Enroot's documented command-line contract (``doc/cmd/import.md``, ``start.md``);
the tests check the exact argv with a recording stand-in program (Enroot cannot be installed
on the project's machines) and ``bench/runtime-check.sh`` checks the real one on a node.
Mounts are colon-separated fstab entries; ``--env NAME`` takes each value from ``enroot``'s own
environment (never an argument); registry credentials go through a private netrc-style
``.credentials`` file in a temporary ``ENROOT_CONFIG_PATH``. Enroot's NVIDIA hook exposes the
devices named in ``NVIDIA_VISIBLE_DEVICES`` only. ``enroot start`` has no working-directory
option: a fixed command script (``--rc``, shipped by faice, no value in it) changes into
``$FAICE_WORKDIR`` and execs the command.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from faice.errors import EngineError
from faice.runtime.cgroups import MemoryCgroup
from faice.runtime.containers import ContainerHandle, ContainerSpec, ImageInfo
from faice.runtime.process import ProcessRuntime, RuntimeCommand, image_key, program_environment

RC_SCRIPT = 'cd "$FAICE_WORKDIR" || exit 126\nunset FAICE_WORKDIR\nexec "$@"\n'


def enroot_uri(ref: str) -> str:
    """``docker://[REGISTRY#]IMAGE[:TAG]``: Enroot separates the registry with ``#``."""
    first, sep, rest = ref.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return f"docker://{first}#{rest}"
    return f"docker://{ref}"


class EnrootRuntime(ProcessRuntime):
    name = "enroot"
    program = "enroot"
    importer = "enroot"  # what imports an image (Pyxis runs batches with srun, imports with enroot)

    def rc_script(self) -> Path:
        return self.cache / "faice-rc.sh"

    def create(self, spec: ContainerSpec) -> ContainerHandle:
        path = self.rc_script()
        if not path.is_file() or path.read_text() != RC_SCRIPT:
            self.cache.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(f".faice-rc.{os.getpid()}")
            partial.write_text(RC_SCRIPT)
            os.replace(partial, path)
        return super().create(spec)

    def command(self, spec: ContainerSpec, cgroup: MemoryCgroup | None) -> RuntimeCommand:
        argv = [self.program, "start", "--rc", str(self.rc_script())]
        for host, target, mode in spec.binds:
            argv += ["--mount", f"{host}:{target}:none:x-create=auto,rbind,{mode}"]
        env = {**program_environment("ENROOT_"), **spec.environment, "FAICE_WORKDIR": spec.workdir}
        if spec.gpu_ids:
            env["NVIDIA_VISIBLE_DEVICES"] = ",".join(spec.gpu_ids)
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(len(spec.gpu_ids)))
        names = sorted(set(spec.environment) | {"FAICE_WORKDIR"} |
                       ({"NVIDIA_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES"} if spec.gpu_ids else set()))
        for name in names:
            argv += ["--env", name]
        argv += [spec.image, *spec.command]
        return RuntimeCommand(argv, env)

    def image_path(self, ref: str) -> str:
        return str(self.cache / f"{image_key(ref)}.sqsh")

    def find_image(self, ref: str) -> ImageInfo | None:
        image = Path(self.image_path(ref))
        return ImageInfo(ref, str(image), None, "") if image.is_file() else None

    def fetch_image(self, ref: str, auth: dict | None) -> ImageInfo:
        image = Path(self.image_path(ref))
        partial = image.with_name(f".{image.name}.{os.getpid()}.part")
        self.cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="faice-enroot-") as config:
            env = {**program_environment("ENROOT_"), "ENROOT_CONFIG_PATH": config}
            password = None
            if auth:
                password = str(auth.get("password", auth.get("_password", "")))
                user = str(auth.get("username", auth.get("_username", "")))
                host = enroot_uri(ref).removeprefix("docker://").split("#")[0] if "#" in enroot_uri(ref) \
                    else "registry-1.docker.io"
                descriptor = os.open(Path(config) / ".credentials", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(descriptor, "w") as handle:
                    handle.write(f"machine {host} login {user} password {password}\n")
            try:
                self.run_program([self.importer, "import", "--output", str(partial), enroot_uri(ref)],
                                 env=env, secret=password)
                if not partial.is_file():
                    raise EngineError(f"enroot import {ref} wrote no image")
                os.replace(partial, image)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    partial.unlink()
        return ImageInfo(ref, str(image), None, "")

    def runtime_error(self, code: int, stderr: str) -> str | None:
        errors = [line for line in stderr.splitlines() if line.startswith("[ERROR]")]
        return "enroot: " + errors[-1].removeprefix("[ERROR]").strip() if code != 0 and errors else None
