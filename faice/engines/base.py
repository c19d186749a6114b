"""The engine seam: what every engine declares and receives.

An engine runs an experiment where it runs (this host, Slurm, a CC-Agency) and gets the typed
:class:`faice.pipeline.options.ExecRequest`; the run directory, its run id and ``--resume``
are :meth:`faice.pipeline.rundir.RunDir.start`'s, the same for every engine that writes one.
``--dry-run`` is :func:`dry_run`, the same for every engine too: the engine only says what
it would do (its ``plan``) and, if it has one, how that reads as text (its ``render``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

from faice.files import dumps_json
from faice.secrets import REDACTOR
from faice.untrusted import for_terminal

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
    honours, the function that runs an experiment (returns the exit code), the one that
    says what a run would do without starting anything (``--dry-run``; a JSON-like dict)
    and, optionally, that plan as text (without it, ``--dry-run`` always prints JSON)."""

    name: str
    flags: frozenset[str]
    run: Callable[[Experiment, ExecRequest], int]
    plan: Callable[[Experiment, ExecRequest], dict[str, Any]]
    render: Callable[[dict[str, Any]], str] | None = None

    def __post_init__(self) -> None:
        unknown = self.flags - ENGINE_FLAGS
        if unknown:
            raise ValueError(f"engine {self.name}: flags not in ENGINE_FLAGS: {sorted(unknown)}")

    def execute(self, experiment: Experiment, request: ExecRequest) -> int:
        """``faice exec`` on this engine: :func:`dry_run` with ``--dry-run``, else ``run``."""
        if request.dry_run:
            return dry_run(self, experiment, request)
        return self.run(experiment, request)


def dry_run(engine: Engine, experiment: Experiment, request: ExecRequest, stream: TextIO | None = None) -> int:
    """``--dry-run`` on every engine: print the engine's plan and start nothing; JSON with
    ``--json`` or when the engine has no text form. Secrets are masked, and so are control
    characters in the text form (a RED file's values reach the terminal)."""
    plan = engine.plan(experiment, request)
    if request.json or engine.render is None:
        text = REDACTOR.redact(dumps_json(REDACTOR.redact_data(plan), indent=2))  # JSON escapes controls
    else:
        text = for_terminal(REDACTOR.redact(engine.render(plan)), lines=True)
    stream = stream or sys.stdout
    stream.write(text + "\n")
    stream.flush()
    return 0
