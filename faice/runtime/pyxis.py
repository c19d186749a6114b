"""Pyxis: each batch a job step of the Slurm job faice runs in, ``srun --container-image=…``.

Pyxis (NVIDIA's SPANK plugin for Slurm) adds ``--container-*`` options to ``srun``; the step's
task then runs in an Enroot container on the node. faice prepares the image once per host
exactly as its Enroot runtime does (``enroot import`` to a ``.sqsh`` file in the shared cache,
under the lock; Pyxis needs Enroot on the node anyway) and runs each batch as::

    srun --ntasks=1 --nodes=1 --overlap --export=ALL --unbuffered --job-name=<container name>
         [--mem=<ram>M] --container-image=<file.sqsh> --container-mounts=SRC:DST:ro,SRC:DST:rw
         --container-workdir=/cc/outputs --no-container-mount-home --container-env=NAME,…
         -- COMMAND…

Written to Pyxis's documented command-line contract (its README and ``args.c``): mounts are
``SRC:DST[:FLAGS]`` entries separated by ``,``, ``--container-env`` takes names only (their
values come from ``srun``'s own environment, which ``--export=ALL`` hands to the step). The
tests check the exact argv with a recording stand-in program (Pyxis cannot be installed on the
project's machines); ``bench/runtime-check.sh`` checks the real one inside an allocation.

Values that would steer ``srun`` rather than reach the batch are refused before anything
runs: a command argument that is a lone ``:`` (``srun`` splits its argv there into the
components of a heterogeneous job, whose options follow), and environment names that
``srun``, Slurm's SPANK plugins, Pyxis or Enroot read as their own settings (``SLURM_…``,
``SRUN_…``, ``SPANK_…``, ``PYXIS_…``, ``ENROOT_…``).

Memory: the step's ``--mem`` is enforced by Slurm's cgroup where the cluster constrains RAM
(``ConstrainRAMSpace=yes``); the step runs below ``slurmstepd``, not below faice, so faice
makes no cgroup of its own, and an OOM kill is told from Slurm's report on srun's stderr.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

from faice.errors import EngineError
from faice.runtime.cgroups import MemoryCgroup
from faice.runtime.cmdline import check_spec
from faice.runtime.containers import ContainerError, ContainerExit, ContainerHandle, ContainerSpec
from faice.runtime.enroot import EnrootRuntime
from faice.runtime.process import (
    ProcessRuntime,
    RuntimeCommand,
    _Batch,
    end_batch_groups,
    image_cache,
    program_environment,
)

# Environment names srun, SPANK plugins, Pyxis and Enroot read as their own settings.
STEERING_PREFIXES = ("SLURM_", "SLURMD_", "SRUN_", "SPANK_", "PYXIS_", "ENROOT_")
# Slurm's words for a step killed for memory (slurmstepd's and srun's).
OOM_REPORT = re.compile(r"oom[-_ ]kill event|Out Of Memory", re.IGNORECASE)
STEP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def check_pyxis(spec: ContainerSpec) -> None:
    """What ``srun`` itself would read as its own (raises EngineError); the values shared with
    every runtime are checked by :func:`faice.runtime.cmdline.check_spec`."""
    for argument in spec.command:
        if argument == ":":
            raise EngineError("pyxis: the command holds a lone ':' argument, which srun reads as the separator of "
                              "a heterogeneous job's components (options would follow it)")
    for name in spec.environment:
        if name.upper().startswith(STEERING_PREFIXES):
            raise EngineError(f"pyxis: environment variable {name[:100]!r} would configure srun, Pyxis or Enroot "
                              f"(names starting with {', '.join(STEERING_PREFIXES)} are refused)")
    if not spec.command:
        raise EngineError("pyxis: the batch has no command")


class PyxisRuntime(EnrootRuntime):
    name = "pyxis"
    program = "srun"
    faice_moves_pid = False  # the batch runs below slurmstepd, not below srun

    def __init__(self, cache: Path | None = None, owner: tuple[int, int] | None = None) -> None:
        # The same .sqsh files as the enroot runtime: one import per image and host for both.
        super().__init__(cache or image_cache("enroot"), owner)

    def batch_cgroup(self, name: str, spec: ContainerSpec) -> MemoryCgroup | None:
        return None  # Slurm's step cgroup (--mem) holds the batch

    def memory_note(self) -> str | None:
        return None  # --mem on the step: Slurm enforces it where the cluster constrains RAM

    def create(self, spec: ContainerSpec) -> ContainerHandle:
        check_spec(spec)
        check_pyxis(spec)
        if not os.environ.get("SLURM_JOB_ID"):
            raise ContainerError("pyxis runs each batch as a job step (srun) of the Slurm job faice runs in: "
                                 "use it with execution.engine slurm, or inside salloc/sbatch")
        return ProcessRuntime.create(self, spec)  # no rc script: --container-workdir does that

    def command(self, spec: ContainerSpec, cgroup: MemoryCgroup | None) -> RuntimeCommand:
        check_pyxis(spec)
        step = spec.name or f"faice-{spec.batch_id}"
        if not STEP_NAME.fullmatch(step):
            raise EngineError(f"pyxis: step name {step[:100]!r}: expected letters, digits, _ . -")
        argv = [self.program, "--ntasks=1", "--nodes=1", "--overlap", "--export=ALL", "--unbuffered",
                f"--job-name={step}"]
        if spec.ram_mb:
            argv.append(f"--mem={int(spec.ram_mb)}M")
        argv.append(f"--container-image={spec.image}")
        if spec.binds:
            argv.append("--container-mounts=" + ",".join(f"{host}:{target}:{mode}" for host, target, mode in spec.binds))
        argv += [f"--container-workdir={spec.workdir}", "--no-container-mount-home"]
        env = {**program_environment("SLURM_", "SLURMD_", "ENROOT_"), **spec.environment}
        names = set(spec.environment)
        if spec.gpu_ids:  # Enroot's NVIDIA hook mounts only these devices
            env["NVIDIA_VISIBLE_DEVICES"] = ",".join(spec.gpu_ids)
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(len(spec.gpu_ids)))
            names |= {"NVIDIA_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES"}
        if names:
            argv.append("--container-env=" + ",".join(sorted(names)))
        argv += ["--", *spec.command]
        return RuntimeCommand(argv, env)

    def runtime_error(self, code: int, stderr: str) -> str | None:
        """srun's or Pyxis's own failure: ``srun: error: …`` / ``pyxis: …`` before any task ran."""
        if code == 0:
            return None
        lines = [line.strip() for line in stderr.splitlines()]
        own = [line for line in lines if line.startswith(("pyxis:", "srun: error: pyxis", "slurmstepd: error: pyxis"))]
        if own:
            return own[-1]
        refused = [line for line in lines if line.startswith("srun: error: Unable to") or "unrecognized option" in line]
        return refused[0] if refused else None

    def exit_state(self, handle: ContainerHandle) -> ContainerExit:
        """As every process runtime's; an OOM kill is what Slurm reports on srun's stderr."""
        exit_ = super().exit_state(handle)
        batch = self._batch(handle)
        if exit_.code != 0 and not exit_.oom and not batch.signalled and \
                OOM_REPORT.search(batch.stderr_tail.decode("utf-8", "replace")):
            return ContainerExit(exit_.code, True, None)
        return exit_

    def after_remove(self, handle: ContainerHandle, batch: _Batch) -> None:
        """A stopped or killed batch: srun passed SIGTERM on to the step's task, SIGKILL it
        cannot pass; the step is cancelled by its name, so nothing runs on unwatched."""
        if batch.signalled:
            self._cancel_steps(lambda name: name == handle.name)

    def remove_batch(self, batch_id: str) -> list[str]:
        """The batch's srun processes on this host, and its job steps wherever they run."""
        prefix = f"faice-{batch_id}-"
        return [*end_batch_groups(batch_id), *self._cancel_steps(lambda name: name.startswith(prefix))]

    def _cancel_steps(self, chosen: Callable[[str], bool]) -> list[str]:
        """Cancel this user's job steps whose name ``chosen`` accepts (squeue, then scancel)."""
        try:
            listed = subprocess.run(["squeue", "--steps", "--noheader", f"--user={os.geteuid()}", "--format=%i %j"],
                                    capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired):
            return []
        steps = []
        for line in listed.stdout.splitlines() if listed.returncode == 0 else []:
            step_id, _, name = line.strip().partition(" ")
            if re.fullmatch(r"[0-9_]+\.[0-9]+", step_id) and chosen(name.strip()):
                steps.append(step_id)
        if steps:
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                subprocess.run(["scancel", "--quiet", *steps], capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
        return [f"job step {s}" for s in steps]
