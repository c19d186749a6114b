"""The engine seam: what every engine declares and receives.

An engine runs an experiment where it runs (this host, Slurm, a CC-Agency) and gets the typed
:class:`faice.pipeline.options.ExecRequest`; the run directory, its run id and ``--resume``
are :meth:`faice.pipeline.rundir.RunDir.start`'s, the same for every engine that writes one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from faice.pipeline.options import ExecRequest
    from faice.red.experiment import Experiment

# The ``faice exec`` flags that only some engines honour (ExecRequest/RunOptions field names);
# given to an engine that does not list it in ``Engine.flags``, the flag is a usage error,
# never silently ignored.
ENGINE_FLAGS = frozenset({
    "outdir", "dry_run", "wait", "resume", "parallel", "fail_fast", "max_failures", "retries", "timeout",
    "gpu_ids", "pull", "disable_pull", "leave_container", "preserve_environment", "runtime", "disable_retry",
})


@dataclass(frozen=True)
class Engine:
    """One engine: its ``execution.engine`` name, the flags of :data:`ENGINE_FLAGS` it
    honours, and the function that runs an experiment (returns the exit code)."""

    name: str
    flags: frozenset[str]
    run: Callable[[Experiment, ExecRequest], int]

    def __post_init__(self) -> None:
        unknown = self.flags - ENGINE_FLAGS
        if unknown:
            raise ValueError(f"engine {self.name}: flags not in ENGINE_FLAGS: {sorted(unknown)}")
