"""Where the pages' runs come from: run directories (``faice ui``) or an agency's database.

Both answer the same questions for a viewer (None locally; the signed-in user on an agency),
so one set of pages serves both. A source never returns another user's run: it raises
:class:`NotFound`, the same answer as for a run that does not exist.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, BinaryIO, Protocol

from faice.agency.ui.live import ChangeLog
from faice.pipeline.results import Results

LOG_TAIL_BYTES = 64 * 1024  # the most a page shows or a tick sends of one stream
FINAL_RUN_STATES = frozenset({"succeeded", "failed", "cancelled", "incomplete", "interrupted"})


class NotFound(Exception):
    """No such run or batch for this viewer."""


@dataclass
class RunSummary:
    """One line of the runs page."""

    id: str
    title: str
    state: str
    counts: dict[str, int]
    started: str | None
    updated: str | None
    objective: dict[str, Any] | None = None
    best: float | None = None
    owner: str | None = None


@dataclass
class RunView:
    """One run as a page shows it: its header, the ranked rows, and its change version."""

    summary: RunSummary
    results: Results
    version: int
    header: dict[str, Any] = field(default_factory=dict)
    changed: frozenset[str] | None = None  # with :meth:`Source.changes`: the batches changed since
    trials: list[dict[str, Any]] | None = None  # a search's proposals, in order (sweep.search)

    @property
    def live(self) -> bool:
        return self.summary.state not in FINAL_RUN_STATES

    def row(self, batch_id: str) -> dict[str, Any] | None:
        """The ranked row of one batch (an index built once per view)."""
        index = self.__dict__.get("_index")
        if index is None:
            index = self.__dict__["_index"] = {str(r["batch"]): r for r in self.results.rows}
        return index.get(batch_id)


@dataclass
class LogChunk:
    """The text of a stream from ``offset`` (at most :data:`LOG_TAIL_BYTES`) and where it ends."""

    text: str
    offset: int
    skipped: int = 0  # bytes before ``text`` never sent (the stream was longer than a tail)


def view_of(run_id: str, title: str, header: dict[str, Any], results: Results, changes: ChangeLog,
            owner: str | None = None) -> RunView:
    """A run's view from its header (run record fields) and ranked results; ``changes`` learns
    which batches changed since the last view of this run."""
    changes.update(results.rows)
    best = results.best
    counts, started, updated = header.get("counts"), header.get("started"), header.get("updated")
    summary = RunSummary(  # a hand-edited run.json's other types: no counts, no times (the list sorts by them)
        id=run_id, title=title, state=str(header.get("state") or "incomplete"),
        counts=dict(counts) if isinstance(counts, dict) else {}, started=started if isinstance(started, str) else None,
        updated=updated if isinstance(updated, str) else None,
        objective=results.objective, best=best["objective"] if best else None, owner=owner)
    return RunView(summary, results, changes.version, {k: v for k, v in header.items() if k != "batches"})


def changed_view(view: RunView, changes: ChangeLog, since: int | None) -> RunView:
    """``view`` with the batches changed after ``since`` (None: as is)."""
    if since is None:
        return view
    return RunView(view.summary, view.results, view.version, view.header, changed=changes.since(since),
                   trials=view.trials)


def log_window(size: int, offset: int | None) -> tuple[int, int]:
    """Where to read a stream of ``size`` bytes for a page that has it up to ``offset`` (None:
    a first look): the start and how many bytes before it are skipped (at most a tail is sent)."""
    start = 0 if offset is None or offset > size else offset  # a shorter stream was replaced: all again
    skipped = 0
    if size - start > LOG_TAIL_BYTES:
        skipped = size - LOG_TAIL_BYTES - start
        start = size - LOG_TAIL_BYTES
    return start, skipped


def log_chunk(data: bytes, start: int, skipped: int) -> LogChunk:
    """``data`` read at ``start`` as text cut on whole UTF-8 characters (a character cut at the
    end is left for the next read); the offset to ask from next."""
    head = 0
    if skipped:
        while head < len(data) and data[head] & 0xC0 == 0x80:
            head += 1
    end = len(data)
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 == 0xC0:
            need = 2 if byte & 0xE0 == 0xC0 else 3 if byte & 0xF0 == 0xE0 else 4
            if back < need:
                end = len(data) - back
            break
        if byte & 0x80 == 0:
            break
    return LogChunk(data[head:end].decode("utf-8", "replace"), start + end, skipped + head)


def log_slice(data: bytes, offset: int | None) -> LogChunk:
    """:func:`log_chunk` of a whole stream held in memory (an agency keeps its tails)."""
    start, skipped = log_window(len(data), offset)
    return log_chunk(data[start:start + LOG_TAIL_BYTES], start, skipped)


@dataclass
class OutputFile:
    path: str  # relative to the batch's outputs, "/"-separated
    size: int


class Source(Protocol):
    """The questions the pages ask; ``viewer`` is who asks (None: the local user)."""

    def runs(self, viewer: Any) -> list[RunSummary]: ...

    def run(self, viewer: Any, run_id: str, *, since: int | None = None) -> RunView: ...

    def batch(self, viewer: Any, run_id: str, batch_id: str) -> dict[str, Any]: ...

    def series(self, viewer: Any, run_id: str, batch_id: str) -> dict[str, list[list[Any]]]: ...

    def log(self, viewer: Any, run_id: str, batch_id: str, stream: str, offset: int | None) -> LogChunk: ...

    def curves(self, viewer: Any, run_id: str, batch_ids: list[str], metric: str) -> dict[str, list[list[Any]]]: ...

    def outputs(self, viewer: Any, run_id: str, batch_id: str) -> list[OutputFile] | None: ...

    def open_output(self, viewer: Any, run_id: str, batch_id: str, path: str) -> BinaryIO: ...

    def crate(self, viewer: Any, run_id: str, target: Any) -> None: ...
