"""The run directory: the one module that knows its layout and reads or writes its files.

    <outdir>/run.json                        the run record (rebuilt from the batch records)
    <outdir>/red.json                        the RED file as run, secrets masked (for --resume)
    <outdir>/batches/<batch-id>/result.json  the batch record
    <outdir>/batches/<batch-id>/metrics.json the batch's whole metrics result (series included)
    <outdir>/batches/<batch-id>/stdout.txt, stderr.txt
    <outdir>/batches/<batch-id>/outputs/     the container's /cc/outputs (working directory)
    <outdir>/slurm/                          a Slurm run's own files (faice.engines.slurm.rundir)

Every engine (local, Slurm per task, packed Slurm workers, the agency runners) writes these
files through :class:`RunDir`, and every reader (``faice results``, ``status``, ``logs``, the
Slurm watcher, ``--resume``) reads them through it, so a run of any engine has one shape,
described by ``schemas/records.schema.json``. Writes are atomic and pass through a redactor,
so a crash never leaves half a record and a secret never reaches the disk.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from faice.errors import UsageError
from faice.files import atomic_write_json, atomic_write_text, open_regular, read_json, tail_text
from faice.pipeline.records import (
    FINAL_STATES,
    KEPT_ON_RESUME,
    STREAM_FILES,
    BatchRecord,
    BatchState,
    Redact,
    RunState,
    enum_or,
    new_run_id,
    now_iso,
    pending_entry,
    run_state,
)
from faice.secrets import REDACTOR

RUN_FILE = "run.json"
RESULT_FILE = "result.json"
METRICS_FILE = "metrics.json"
RED_FILE = "red.json"
BATCHES = "batches"
OUTPUTS = "outputs"
DEFAULT_ROOT = Path("faice-runs")  # where faice exec puts runs without --outdir
# The most of a metrics.json read back: faice writes at most MAX_POINTS per series (about
# 0.5 MiB each), so this holds dozens of metrics; parsing a larger file (written by someone
# else) would take gigabytes and minutes, and the record's summary stands in for it.
METRICS_READ_LIMIT = 32 * 2**20
STDERR_TAIL_BYTES = 4000  # what a failure report or debug_info shows of a batch's stderr
_HELD: dict[str, int] = {}  # run directories this process runs in -> the descriptor holding the lock
_HELD_LOCK = threading.Lock()


@dataclass(frozen=True)
class BatchDir:
    """The files of one batch."""

    path: Path

    @property
    def record(self) -> Path:
        return self.path / RESULT_FILE

    @property
    def metrics(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def outputs(self) -> Path:
        return self.path / OUTPUTS

    @property
    def stdout(self) -> Path:
        return self.path / STREAM_FILES["stdout"]

    @property
    def stderr(self) -> Path:
        return self.path / STREAM_FILES["stderr"]

    def stream(self, name: str) -> Path:
        """``stdout`` or ``stderr``."""
        return self.path / STREAM_FILES[name]

    def streams(self) -> dict[str, Path]:
        return {name: self.path / file for name, file in STREAM_FILES.items()}


def is_batch_id(text: str) -> bool:
    """Whether ``text`` can name a batch directory (never a path out of ``batches/``)."""
    return bool(text) and text not in (".", "..") and "/" not in text and "\\" not in text and "\0" not in text


def default_outdir(run_id: str, root: Path | None = None) -> Path:
    """``faice-runs/<local time>-<run id>``: where a run without ``--outdir`` goes."""
    return (root or DEFAULT_ROOT) / f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{run_id}"


class RunDir:
    """One run directory: its paths, its records, and its state for ``--resume``."""

    def __init__(self, root: Path | str):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"

    @classmethod
    def start(cls, outdir: Path | None, *, resume: bool, root: Path | None = None) -> tuple[RunDir, str]:
        """The run directory of a new or resumed run (``outdir``, else a new one under
        ``root``) and its run id: a resumed run keeps the id it had, whatever the engine."""
        run_id = new_run_id()
        rundir = cls(Path(outdir) if outdir is not None else default_outdir(run_id, root))
        previous = rundir.prepare(resume=resume)
        return rundir, str((previous or {}).get("runId") or run_id)

    # ------------------------------------------------------------------ paths

    @property
    def run_file(self) -> Path:
        return self.root / RUN_FILE

    @property
    def red_file(self) -> Path:
        return self.root / RED_FILE

    @property
    def batches(self) -> Path:
        return self.root / BATCHES

    def batch(self, batch_id: str) -> BatchDir:
        return BatchDir(self.batches / batch_id)

    def is_run(self) -> bool:
        """Whether this is a faice run directory (a run.json, or batch directories)."""
        return self.run_file.is_file() or self.batches.is_dir()

    def batch_ids(self) -> list[str]:
        """The batch directories present (listed or not in run.json), sorted."""
        if not self.batches.is_dir():
            return []
        with os.scandir(self.batches) as found:
            return sorted(item.name for item in found if item.is_dir())

    # ------------------------------------------------------------------ create / resume

    def prepare(self, *, resume: bool) -> dict[str, Any] | None:
        """Create the directory; refuse a non-empty one unless resuming. Returns the old run.json."""
        root = self.root
        if root.exists() and not root.is_dir():
            raise UsageError(f"--outdir {root}: exists and is not a directory")
        if resume:
            if not self.is_run() and root.exists() and any(root.iterdir()):
                raise UsageError(f"--outdir {root}: --resume needs a faice run directory (no {RUN_FILE})")
            root.mkdir(parents=True, exist_ok=True)
            previous = self.read_run()
            if previous is not None:
                self._refuse_live_run(previous)
            self.hold()
            return previous
        if root.exists() and any(root.iterdir()):
            raise UsageError(
                f"--outdir {root}: directory is not empty; faice never merges two runs",
                hint="choose another --outdir, or add --resume to continue the run recorded there",
            )
        root.mkdir(parents=True, exist_ok=True)
        self.hold()
        return None

    def hold(self) -> None:
        """Lock the directory for this process (``flock`` on it, released by :meth:`release`
        when the run ends, or when the process dies): another faice process on this host
        cannot start or resume a run here meanwhile, not even while this one is still in
        preflight and run.json says nothing yet. Without ``flock`` (some network file
        systems) the run.json check of :meth:`prepare` remains."""
        key = str(self.root.resolve())
        with _HELD_LOCK:
            if key in _HELD:
                return
            fd = os.open(key, os.O_RDONLY | os.O_DIRECTORY)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise UsageError(f"--outdir {self.root}: another faice process on this host is running a run in it",
                                 hint="wait until it ends, or stop it (Ctrl-C or SIGTERM to that process)") from None
            except OSError:
                os.close(fd)
                return
            _HELD[key] = fd

    def release(self) -> None:
        """The run here ended: another process may resume it."""
        with _HELD_LOCK:
            fd = _HELD.pop(str(self.root.resolve()), None)
        if fd is not None:
            os.close(fd)

    def _refuse_live_run(self, run: dict[str, Any]) -> None:
        """``--resume`` of a run whose faice process still runs it would run its running batches
        a second time, into the same directories (deleting their live ``outputs/``): refuse.
        A process on another host counts as alive; a resume there tells a dead one apart."""
        from faice.runtime.docker import owner_alive

        owner = run.get("owner")
        if run.get("state") != RunState.RUNNING.value or not isinstance(owner, str) or not owner_alive(owner):
            return
        host, _, rest = owner.partition(":")
        raise UsageError(
            f"--outdir {self.root}: run {run.get('runId')} is still going (faice process {rest.partition(':')[0]} "
            f"on {host}); --resume continues a run only after it ended",
            hint="wait until it ends, or stop it (Ctrl-C or SIGTERM to that process); a run whose host lost "
                 "its process is resumed on that host first",
        )

    def kept_on_resume(self, batch_id: str) -> BatchRecord | None:
        """The record of a batch that ``--resume`` keeps (succeeded or stopped), else None:
        the one resume rule of every engine."""
        record = self.read_record(batch_id)
        return record if record is not None and record.state in KEPT_ON_RESUME else None

    def recorded_entries(self) -> dict[str, dict[str, Any]]:
        """run.json's batch entries by id (what the previous run knew, records or not)."""
        run = self.read_run() or {}
        return {str(e["id"]): e for e in run.get("batches") or [] if isinstance(e, dict) and e.get("id")}

    def save_red(self, data: dict[str, Any], redact: Redact) -> None:
        """Keep the RED document as run (already masked by the caller; ``redact`` masks the rest)."""
        atomic_write_json(self.red_file, data, redact=redact)

    def read_red(self) -> dict[str, Any] | None:
        data = read_json(self.red_file, beneath=self.root)
        return data if isinstance(data, dict) else None

    # ------------------------------------------------------------------ batch records

    def write_record(self, record: BatchRecord, *, redact: Redact = REDACTOR.redact) -> None:
        """The only writer of ``result.json``."""
        atomic_write_json(self.batch(record.batch_id).record, record.to_dict(), redact=redact)

    def read_record(self, batch_id: str) -> BatchRecord | None:
        data = read_json(self.batch(batch_id).record, beneath=self.root)
        return BatchRecord.from_dict(data) if isinstance(data, dict) else None

    def read_record_data(self, batch_id: str) -> dict[str, Any] | None:
        """The record as stored (``faice status --json ID``, MLflow artifacts)."""
        data = read_json(self.batch(batch_id).record, beneath=self.root)
        return data if isinstance(data, dict) else None

    def remove_record(self, batch_id: str) -> None:
        """Drop a stale record (of an earlier attempt) so that it cannot pass for this one's."""
        self.batch(batch_id).record.unlink(missing_ok=True)

    def scan_records(self, skip: set[str] | frozenset[str] = frozenset(),
                     only: set[str] | None = None) -> Iterator[tuple[str, dict[str, Any] | None]]:
        """(directory name, stored record or None) of every batch directory (fast: one
        listing, one read per batch); ``skip``/``only`` filter by directory name."""
        if not self.batches.is_dir():
            return
        with os.scandir(self.batches) as found:
            for item in found:
                if item.name in skip or (only is not None and item.name not in only) or not item.is_dir():
                    continue
                data = read_json(Path(item.path) / RESULT_FILE, beneath=self.root)
                yield item.name, data if isinstance(data, dict) else None

    def records(self) -> dict[str, BatchRecord]:
        """Every ``batches/*/result.json``, by batch id."""
        found: dict[str, BatchRecord] = {}
        for _name, data in sorted(self.scan_records(), key=lambda item: item[0]):
            if data is not None:
                record = BatchRecord.from_dict(data)
                found[record.batch_id] = record
        return found

    def read_metrics(self, batch_id: str) -> dict[str, Any] | None:
        """The batch's whole metrics result (``metrics.json``), else the summary in its record."""
        data = read_json(self.batch(batch_id).metrics, beneath=self.root, limit=METRICS_READ_LIMIT)
        if isinstance(data, dict):
            return data
        record = self.read_record_data(batch_id) or {}
        metrics = record.get("metrics")
        return metrics if isinstance(metrics, dict) else None

    def write_metrics(self, batch_id: str, result: dict[str, Any], *, redact: Redact) -> None:
        atomic_write_json(self.batch(batch_id).metrics, result, redact=redact)

    # ------------------------------------------------------------------ logs

    def write_stream(self, batch_id: str, stream: str, text: str, *, redact: Redact = REDACTOR.redact,
                     keep: bool = False) -> None:
        """Write a batch's ``stdout.txt`` or ``stderr.txt`` whole (the reason a batch never ran,
        what its Slurm task printed, what an agency recorded), so ``faice logs`` shows it;
        ``keep``: leave an existing one alone."""
        path = self.batch(batch_id).stream(stream)
        if keep and path.exists():
            return
        atomic_write_text(path, text if not text or text.endswith("\n") else text + "\n", redact=redact)

    def stderr_tail(self, batch_id: str, limit: int = STDERR_TAIL_BYTES) -> str:
        """The last ``limit`` bytes of a batch's stderr in whole lines (read from the end)."""
        return tail_text(self.batch(batch_id).stderr, limit, beneath=self.root)

    # ------------------------------------------------------------------ run record

    def read_run(self) -> dict[str, Any] | None:
        data = read_json(self.run_file, beneath=self.root)
        return data if isinstance(data, dict) else None

    def write_run(self, header: dict[str, Any], entries: list[dict[str, Any]], *,
                  phase: RunState | None = None, complete: bool = True,
                  redact: Redact = REDACTOR.redact) -> dict[str, Any]:
        """The only writer of ``run.json``: header fields, state, counts and one entry per batch
        (``complete``: see :func:`~faice.pipeline.records.run_state`)."""
        entries = sorted(entries, key=lambda e: (e.get("index") is None, e.get("index") or 0))
        counts: dict[str, int] = {}
        for entry in entries:
            name = entry.get("state") or BatchState.PENDING.value
            counts[name] = counts.get(name, 0) + 1
        data = {k: v for k, v in header.items() if k not in ("batches", "counts", "state")}
        data.update(state=run_state(entries, phase or header.get("state"), complete=complete).value, counts=counts,
                    batches=entries, updated=now_iso())
        atomic_write_json(self.run_file, data, redact=redact)
        return data

    def mark_interrupted(self, owner: str) -> bool:
        """The faice process ``owner`` died while this run was running: say so in ``run.json``
        (found at the next start, from the dead run's temp dir). A run.json of another process,
        or one that ended, is left alone."""
        data = self.read_run()
        if data is None or data.get("owner") != owner or data.get("state") != RunState.RUNNING.value:
            return False
        data.update(state=RunState.INTERRUPTED.value, interrupted=now_iso(), updated=now_iso())
        atomic_write_json(self.run_file, data)  # its values were masked when written
        return True

    def rebuild(self, live: dict[str, BatchState] | None = None, header: dict[str, Any] | None = None,
                described: dict[str, tuple[int | None, dict[str, Any] | None]] | None = None,
                cancelled_early: bool = False) -> dict[str, Any]:
        """Rewrite ``run.json`` from every batch record; ``live`` gives the state of batches
        whose record is not final yet (a scheduler's view), ``header`` fields to set and
        ``described`` the (index, parameters) of batches that have no record yet;
        ``cancelled_early``: cancelled before every batch was even proposed (a search)."""
        old = self.read_run() or {}
        known = self.recorded_entries()
        records = self.records()
        entries = []
        for batch_id in dict.fromkeys([*known, *records, *(live or {})]):
            record = records.get(batch_id)
            state = (live or {}).get(batch_id)
            if record is not None and (record.is_final or state is None):
                entries.append(record.entry())
                continue
            entry = known.get(batch_id) or {}
            if record is not None:
                entry = record.entry()
            current = state or enum_or(BatchState, entry.get("state"), BatchState.PENDING)
            if current.is_final and record is None:
                current = BatchState.PENDING  # no record yet: not final as far as anyone can tell
            index, parameters = (described or {}).get(batch_id, (entry.get("index"), entry.get("parameters")))
            entries.append(pending_entry(batch_id, index, parameters, current))
        merged = {**old, **(header or {})}
        live_run = any(e["state"] not in {s.value for s in FINAL_STATES} for e in entries)
        phase = RunState.RUNNING if live_run and live else RunState.CANCELLED if cancelled_early else None
        return self.write_run(merged, entries, phase=phase, complete=not cancelled_early)

    def read_or_rebuild(self) -> dict[str, Any]:
        """run.json, rebuilt from the batch records when a run left none (a Slurm run whose
        tasks wrote only batch records); UsageError when this is no run directory."""
        run = self.read_run()
        if run is not None:
            _check_entries(self.run_file, run)
            return run
        if os.path.lexists(self.run_file):
            try:
                open_regular(self.run_file, beneath=self.root).close()
            except OSError as exc:  # why it cannot be read: permissions, a FIFO, a link out
                raise UsageError(f"{self.run_file}: {exc.strerror or exc} (expected a run record, a regular "
                                 "file of this run directory)") from None
            raise UsageError(f"{self.run_file}: not a run record (expected a JSON object)")
        if not self.batches.is_dir():
            raise UsageError(f"{self.run_file}: no such file; --outdir must be a faice run directory")
        return self.rebuild()


def _check_entries(path: Path, run: dict[str, Any]) -> None:
    """UsageError unless run.json's ``batches`` is a list of objects whose ``parameters``
    are an object (or absent): what ``faice status`` and ``list`` print."""
    entries = run.get("batches")
    if entries is None:
        return
    if not isinstance(entries, list):
        raise UsageError(f"{path}: batches: expected a list of batch entries, got {type(entries).__name__}")
    for number, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise UsageError(f"{path}: batches[{number}]: expected an object, got {type(entry).__name__}")
        if entry.get("parameters") is not None and not isinstance(entry["parameters"], dict):
            raise UsageError(f"{path}: batches[{number}].parameters: expected an object, "
                             f"got {type(entry['parameters']).__name__}")
