"""Apptainer (and SingularityCE): ``pull`` to a SIF once per image into a shared cache under a
lock, ``exec --containall --cleanenv --no-home`` per batch.

Written to Apptainer's documented command-line contract; the tests check the exact argv with a
recording stand-in program (Apptainer cannot be installed on the project's machines), and
``bench/runtime-check.sh`` checks the real program on a cluster node. Environment values go in
as ``APPTAINERENV_<NAME>`` variables of ``apptainer``'s own environment, never as arguments;
registry credentials as ``APPTAINER_DOCKER_USERNAME``/``_PASSWORD``. GPUs: ``--nv`` binds the
driver and every device; the batch's own are named in ``CUDA_VISIBLE_DEVICES`` and
``NVIDIA_VISIBLE_DEVICES`` (device-level isolation is Slurm's cgroup's, where it confines).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from faice.errors import EngineError
from faice.runtime.cgroups import MemoryCgroup
from faice.runtime.containers import ContainerSpec, ImageInfo
from faice.runtime.process import ProcessRuntime, RuntimeCommand, image_key, program_environment

APPTAINER_ERROR = 255  # apptainer's own failures


class ApptainerRuntime(ProcessRuntime):
    name = "apptainer"
    program = "apptainer"

    def command(self, spec: ContainerSpec, cgroup: MemoryCgroup | None) -> RuntimeCommand:
        argv = [self.program, "exec", "--containall", "--cleanenv", "--no-home"]
        for host, target, mode in spec.binds:
            argv += ["--bind", f"{host}:{target}:{mode}"]
        argv += ["--pwd", spec.workdir]
        env = {**program_environment("APPTAINER_", "SINGULARITY_")}
        env.update({f"APPTAINERENV_{k}": v for k, v in spec.environment.items()})
        if spec.gpu_ids:
            argv.append("--nv")
            ids = ",".join(spec.gpu_ids)
            env["APPTAINERENV_CUDA_VISIBLE_DEVICES"] = env["APPTAINERENV_NVIDIA_VISIBLE_DEVICES"] = ids
        argv += [spec.image, *spec.command]
        return RuntimeCommand(argv, env)

    def image_path(self, ref: str) -> str:
        return str(self.cache / f"{image_key(ref)}.sif")

    def find_image(self, ref: str) -> ImageInfo | None:
        sif = Path(self.image_path(ref))
        return ImageInfo(ref, str(sif), None, "") if sif.is_file() else None

    def fetch_image(self, ref: str, auth: dict | None) -> ImageInfo:
        sif = Path(self.image_path(ref))
        self.cache.mkdir(parents=True, exist_ok=True)
        partial = sif.with_name(f".{sif.name}.{os.getpid()}.part")
        env = program_environment("APPTAINER_", "SINGULARITY_")
        password = None
        if auth:
            password = str(auth.get("password", auth.get("_password", "")))
            env["APPTAINER_DOCKER_USERNAME"] = str(auth.get("username", auth.get("_username", "")))
            env["APPTAINER_DOCKER_PASSWORD"] = password
        try:
            self.run_program([self.program, "pull", "--force", str(partial), f"docker://{ref}"], env=env, secret=password)
            if not partial.is_file():
                raise EngineError(f"apptainer pull {ref} wrote no SIF")
            os.replace(partial, sif)  # whole or absent: a killed pull never leaves half a SIF
        finally:
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()
        return ImageInfo(ref, str(sif), None, "")

    def runtime_error(self, code: int, stderr: str) -> str | None:
        if code != APPTAINER_ERROR:
            return None
        lines = [line for line in stderr.splitlines() if line.strip()]
        return "apptainer: " + (lines[-1] if lines else f"exit code {code}")
