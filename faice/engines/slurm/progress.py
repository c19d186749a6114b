"""Following a Slurm job array with the local engine's progress display: Slurm's task states
become :class:`faice.pipeline.events.BatchEvent` s; at the end, the summary table and, for
every failed batch, the tail of its stderr."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from faice.engines.display import ProgressDisplay, summary_table
from faice.pipeline.events import BatchEvent
from faice.pipeline.records import BatchState
from faice.pipeline.rundir import RunDir
from faice.secrets import REDACTOR

STDERR_TAIL_CHARS = 1500


class Follower:
    """Feeds the progress display with what changed since the last poll."""

    def __init__(self, outdir: Path, batch_index: dict[str, int], *, live: bool | None = None,
                 total: int | None = None):
        self.outdir = Path(outdir)
        self.rundir = RunDir(self.outdir)
        self.batch_index = batch_index  # a search's grows while it runs (total: its budget)
        total = total or max([len(batch_index), *(i + 1 for i in batch_index.values() if isinstance(i, int))])
        self.display = ProgressDisplay(total, live=live)
        self._seen: dict[str, BatchState] = {}

    def __enter__(self) -> Follower:
        self.display.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.display.__exit__(*exc)

    def note(self, text: str) -> None:
        self.display.note(text)

    def update(self, states: dict[str, BatchState]) -> None:
        for batch_id, state in states.items():
            if self._seen.get(batch_id) == state:
                continue
            self._seen[batch_id] = state
            record = self.rundir.read_record(batch_id) if state.is_final else None
            index = self.batch_index.get(batch_id) or 0
            self.display(BatchEvent(
                batch_id, index, state.value,
                message=record.message if record else None,
                failure_class=str(record.failure_class) if record and record.failure_class else None,
                seconds=record.timings.get("total") if record else None,
            ))

    def report(self, summary: dict[str, Any]) -> None:
        outdir = Path(summary.get("outdir") or self.outdir)
        for entry in summary.get("batches", []):
            if entry.get("state") == "failed":
                tail = stderr_tail(outdir, entry["id"])
                if tail:
                    text = f"faice: stderr of failed batch {entry['id']}:\n" + "\n".join("  " + line for line in tail.splitlines())
                    print(REDACTOR.redact(text), file=sys.stderr, flush=True)
        summary_table(summary)


def stderr_tail(outdir: Path, batch_id: str) -> str:
    return RunDir(outdir).stderr_tail(batch_id, STDERR_TAIL_CHARS).strip()
