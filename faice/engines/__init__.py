"""Execution engines decide *where* batch plans run; the batch pipeline is the same everywhere.

* ``ccfaice`` / ``local`` → :mod:`faice.engines.local` (this host's container runtime)
* ``ccagency`` → :mod:`faice.engines.agency` (a remote CC-Agency over REST)
* ``slurm`` → :mod:`faice.engines.slurm` (Slurm job arrays; each task runs one batch)

An engine is a function ``(experiment, ExecRequest) -> exit code`` in :data:`ENGINES`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from faice.pipeline.options import RunOptions

if TYPE_CHECKING:
    from faice.red.experiment import Experiment


@dataclass
class ExecRequest:
    """What ``faice exec`` asked for, beyond the run options every engine shares."""

    options: RunOptions = field(default_factory=RunOptions)
    outdir: Path | None = None
    dry_run: bool = False
    json: bool = False
    wait: bool = False  # agency/slurm: follow until every batch is final
    progress: bool = True  # False: plain lines instead of a live display
    disable_retry: bool = False  # agency: ask the server not to retry failed batches


Engine = Callable[["Experiment", ExecRequest], int]


def _local(experiment: Experiment, request: ExecRequest) -> int:
    from faice.engines.local import run

    return run(experiment, request)


def _agency(experiment: Experiment, request: ExecRequest) -> int:
    from faice.engines.agency.engine import run

    return run(experiment, request)


def _slurm(experiment: Experiment, request: ExecRequest) -> int:
    from faice.engines.slurm.engine import run

    return run(experiment, request)


# Imported lazily by each entry, so `faice exec` loads only the engine it uses.
ENGINES: dict[str, Engine] = {"ccfaice": _local, "ccagency": _agency, "slurm": _slurm}

# Flags that only make sense for some engines (upstream's cross-check, minus harmless ones).
ENGINE_ONLY_FLAGS = {
    "disable_retry": {"ccagency"},
    "leave_container": {"ccfaice", "slurm"},
    "disable_pull": {"ccfaice", "slurm"},
    "pull": {"ccfaice", "slurm"},
    "preserve_environment": {"ccfaice", "slurm"},
    "gpu_ids": {"ccfaice"},
    "runtime": {"ccfaice", "slurm"},
    "dry_run": {"ccfaice", "slurm", "ccagency"},
}
