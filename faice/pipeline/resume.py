"""``--resume`` of a run whose RED file changed: what is reused, new or run again, and why.

Batch ids are content-derived (:func:`faice.red.sweep.batch_id`: tool, image, inputs,
outputs, sweep values), so a sweep that gained values keeps the ids of its old batches and a
batch whose tool, image or inputs changed gets a new id. A resumed run therefore keeps the
finished batches whose id is still in the RED file, runs the rest, and says so, e.g.
``resume: 4 reused, 2 new, 1 re-run: failed``. To name *why* a batch is new, the run
directory keeps the RED file as run (``red.json``, secrets masked).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from faice.files import standard_json
from faice.pipeline.records import KEPT_ON_RESUME, BatchRecord
from faice.pipeline.rundir import RunDir
from faice.secrets import Redactor, batch_redactor

MAX_REASONS = 10  # "why new" lines shown; the rest are counted


def save_red_file(rundir: RunDir, data: dict[str, Any], redactor: Redactor) -> None:
    """Keep the RED document of this run in its directory, every secret masked (the run's
    variables and every value under a protected key such as ``password``)."""
    masking = batch_redactor(data, parent=redactor)
    rundir.save_red(masking.redact_data(data), masking.redact)


def recorded_indexes(outdir: Path) -> dict[str, int]:
    """The sweep index ``run.json`` records for each batch of a run being resumed: the batches
    keep them, so ``$(sweep.index)`` of a batch never moves while its sweep grows."""
    return {batch_id: e["index"] for batch_id, e in RunDir(outdir).recorded_entries().items()
            if isinstance(e.get("index"), int)}


def _image(data: dict[str, Any]) -> Any:
    settings = (data.get("container") or {}).get("settings") or {}
    return (settings.get("image") or {}).get("url") if isinstance(settings, dict) else None


@dataclass
class ResumePlan:
    """The comparison of the batches of a RED file with those recorded in a run directory."""

    recorded: dict[str, dict[str, Any]]  # id -> run.json entry of the previous run
    previous_red: dict[str, Any] | None
    current_red: dict[str, Any]
    reused: int = 0
    new: list[tuple[str, str]] = field(default_factory=list)  # (batch id, why)
    rerun: Counter = field(default_factory=Counter)  # previous state -> count
    seen: set[str] = field(default_factory=set)

    @classmethod
    def of(cls, rundir: RunDir, current_red: dict[str, Any]) -> ResumePlan:
        return cls(rundir.recorded_entries(), rundir.read_red(), current_red)

    def add(self, batch_id: str, parameters: dict[str, Any], previous: BatchRecord | None) -> None:
        """One batch of the RED file, with its record in the run directory (if any)."""
        self.seen.add(batch_id)
        if previous is not None and previous.state in KEPT_ON_RESUME:
            self.reused += 1
        elif previous is not None:
            self.rerun[previous.state.value] += 1
        elif batch_id in self.recorded:
            self.rerun[str(self.recorded[batch_id].get("state") or "pending")] += 1
        else:
            self.new.append((batch_id, self.why_new(parameters)))

    def why_new(self, parameters: dict[str, Any]) -> str:
        """Why a batch has no record: new sweep values, or a changed tool, image or input."""
        wanted = standard_json(parameters)  # as run.json holds them (.inf is "Infinity" there)
        same = [e for e in self.recorded.values() if (e.get("parameters") or {}) == wanted]
        if not same:
            return "new parameter values" if parameters else "not run before"
        previous = self.previous_red or {}
        if self.previous_red is not None and previous.get("cli") != self.current_red.get("cli"):
            return "the tool (cli) changed"
        if self.previous_red is not None and _image(previous) != _image(self.current_red):
            return f"the image changed ({_image(previous)} -> {_image(self.current_red)})"
        return "its inputs or outputs changed"

    def lines(self) -> list[str]:
        """What the user is told before the batches start."""
        parts = [f"{self.reused} reused", f"{len(self.new)} new"]
        parts += [f"{count} re-run: {state}" for state, count in sorted(self.rerun.items())]
        gone = [i for i in self.recorded if i not in self.seen]
        if gone:
            parts.append(f"{len(gone)} no longer in the RED file (their directories are kept)")
        lines = ["resume: " + ", ".join(parts)]
        for batch_id, why in self.new[:MAX_REASONS]:
            lines.append(f"resume: {batch_id} is new: {why}")
        if len(self.new) > MAX_REASONS:
            lines.append(f"resume: … and {len(self.new) - MAX_REASONS} more new batches")
        return lines
