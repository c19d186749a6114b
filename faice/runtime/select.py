"""The container runtime a batch runs in, by name: the RED file's ``container.engine``
(``docker`` by default), or ``faice exec --runtime NAME`` for one run."""

from __future__ import annotations

from faice.errors import UsageError
from faice.runtime.containers import ContainerRuntime, ContainerSpec

RUNTIME_NAMES = ("docker", "podman", "charliecloud", "apptainer", "enroot", "pyxis")
DEFAULT_RUNTIME = "docker"


def check_runtime_name(name: str) -> str:
    if name not in RUNTIME_NAMES:
        raise UsageError(f"unknown container runtime {name!r}; expected one of {', '.join(RUNTIME_NAMES)}")
    return name


def open_runtime(name: str) -> ContainerRuntime:
    """The runtime ``name``; Docker's is connected (and pinged) here, the others are programs
    found when a batch first needs them."""
    check_runtime_name(name)
    if name == "docker":
        from faice.runtime.docker import DockerRuntime

        return DockerRuntime.connect()
    return process_runtime(name)


def process_runtime(name: str):
    """A command-line runtime (also for ``--dry-run``, which starts nothing)."""
    if name == "podman":
        from faice.runtime.podman import PodmanRuntime

        return PodmanRuntime()
    if name == "charliecloud":
        from faice.runtime.charliecloud import CharliecloudRuntime

        return CharliecloudRuntime()
    if name == "apptainer":
        from faice.runtime.apptainer import ApptainerRuntime

        return ApptainerRuntime()
    if name == "enroot":
        from faice.runtime.enroot import EnrootRuntime

        return EnrootRuntime()
    if name == "pyxis":
        from faice.runtime.pyxis import PyxisRuntime

        return PyxisRuntime()
    raise UsageError(f"{name} is not a command-line runtime")


def docker_run_argv(spec: ContainerSpec) -> list[str]:
    """The ``docker run`` that faice's Docker API calls for ``spec`` amount to (``--dry-run``)."""
    argv = ["docker", "run", "--rm", "--init", "--name", spec.name or spec.batch_id, "--label", f"org.faice.batch={spec.batch_id}"]
    for host, target, mode in spec.binds:
        argv += ["--volume", f"{host}:{target}:{mode}"]
    argv += ["--workdir", spec.workdir, "--ulimit", "nofile=4096:4096"]
    for name in spec.environment:
        argv += ["--env", name]
    if spec.ram_mb:
        argv += ["--memory", f"{int(spec.ram_mb)}m", "--memory-swap", f"{int(spec.ram_mb)}m"]
    if spec.gpu_ids:
        argv += ["--gpus", f"\"device={','.join(spec.gpu_ids)}\""]
    return [*argv, spec.image, *spec.command]
