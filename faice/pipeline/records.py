"""The run directory and its records: the only owner of both record types.

    <outdir>/run.json                        the run record (rebuilt from the batch records)
    <outdir>/batches/<batch-id>/result.json  the batch record
    <outdir>/batches/<batch-id>/stdout.txt, stderr.txt
    <outdir>/batches/<batch-id>/outputs/     the container's /cc/outputs (working directory)

Every engine writes these files through this module, so a record of a local, Slurm or agency
batch has one shape, described by ``schemas/records.schema.json``. Writes are atomic and pass
through a redactor, so a crash never leaves half a record and a secret never reaches the disk.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from faice.errors import UsageError
from faice.files import atomic_write_json, read_json
from faice.secrets import REDACTOR

RUN_FILE = "run.json"
RESULT_FILE = "result.json"
STREAM_FILES = {"stdout": "stdout.txt", "stderr": "stderr.txt"}

Redact = Callable[[str], str]


class BatchState(str, enum.Enum):
    """Where a batch stands; the last four are final.

    ``stopped``: the early-stopping rule ended the batch (failure class ``stopped-early``); it
    is a planned end, not an error, so a run of succeeded and stopped batches succeeded.
    """

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    STOPPED = "stopped"

    def __str__(self) -> str:
        return self.value

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATES


FINAL_STATES = frozenset({BatchState.SUCCEEDED, BatchState.FAILED, BatchState.CANCELLED, BatchState.STOPPED})
# Final states a resumed run keeps (the others run again).
KEPT_ON_RESUME = frozenset({BatchState.SUCCEEDED, BatchState.STOPPED})


class FailureClass(str, enum.Enum):
    """Why a batch did not succeed: what a user (or ``--retries``) acts on."""

    EXIT_CODE = "exit-code"
    OOM = "oom"
    MISSING_OUTPUT = "missing-output"
    CONNECTOR = "connector"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    STOPPED_EARLY = "stopped-early"
    ENGINE = "engine"

    def __str__(self) -> str:
        return self.value


class RunState(str, enum.Enum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INCOMPLETE = "incomplete"
    INTERRUPTED = "interrupted"  # its faice process died (SIGKILL, power loss) while it ran

    def __str__(self) -> str:
        return self.value


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# ----------------------------------------------------------------------------- batch record


@dataclass
class BatchRecord:
    """One batch's ``result.json``: upstream's agent result fields plus faice's own."""

    batch_id: str
    batch_index: int | None
    run_id: str | None
    parameters: dict[str, Any]
    state: BatchState
    failure_class: FailureClass | None = None
    message: str | None = None
    command: list[str] | None = None
    process: dict[str, Any] | None = None
    inputs: dict[str, Any] | None = field(default_factory=dict)
    outputs: dict[str, Any] | None = field(default_factory=dict)
    debug_info: list[str] | None = None
    image: dict[str, Any] | None = None
    gpus: list[dict[str, Any]] = field(default_factory=list)
    started: str | None = None
    finished: str | None = None
    attempts: int | None = None
    timings: dict[str, float] = field(default_factory=dict)
    # Set only when they apply:
    retried_after: list[str] = field(default_factory=list)
    cleanup_errors: list[str] = field(default_factory=list)
    container: str | None = None
    engine: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None

    @property
    def is_final(self) -> bool:
        return self.state in FINAL_STATES

    def fail(self, failure_class: FailureClass, message: str) -> None:
        """End as failed (cancelled or stopped, for those classes) with a one-line reason."""
        self.state = {FailureClass.CANCELLED: BatchState.CANCELLED,
                      FailureClass.STOPPED_EARLY: BatchState.STOPPED}.get(failure_class, BatchState.FAILED)
        self.failure_class = failure_class
        self.message = message

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "batchId": self.batch_id,
            "batchIndex": self.batch_index,
            "runId": self.run_id,
            "parameters": self.parameters,
            "state": self.state.value,
            "failureClass": self.failure_class.value if self.failure_class else None,
            "message": self.message,
            "command": self.command,
            "process": self.process,
            "inputs": self.inputs,
            "outputs": self.outputs,
            "debugInfo": self.debug_info,
            "image": self.image,
            "gpus": self.gpus,
            "started": self.started,
            "finished": self.finished,
            "attempts": self.attempts,
            "timings": self.timings,
        }
        optional = {
            "retriedAfter": self.retried_after,
            "cleanupErrors": self.cleanup_errors,
            "container": self.container,
            "engine": self.engine,
            "metrics": self.metrics,
        }
        data.update({k: v for k, v in optional.items() if v})
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BatchRecord:
        """A record read back from disk (older faice versions included: absent fields default)."""
        failure = data.get("failureClass")
        return cls(
            batch_id=str(data.get("batchId")),
            batch_index=data.get("batchIndex"),
            run_id=data.get("runId"),
            parameters=data.get("parameters") or {},
            state=_enum(BatchState, data.get("state"), BatchState.FAILED),
            failure_class=_enum(FailureClass, failure, FailureClass.ENGINE) if failure else None,
            message=data.get("message"),
            command=data.get("command"),
            process=data.get("process"),
            inputs=data.get("inputs"),
            outputs=data.get("outputs"),
            debug_info=data.get("debugInfo"),
            image=data.get("image"),
            gpus=data.get("gpus") or [],
            started=data.get("started"),
            finished=data.get("finished"),
            attempts=data.get("attempts"),
            timings=data.get("timings") or {},
            retried_after=data.get("retriedAfter") or [],
            cleanup_errors=data.get("cleanupErrors") or [],
            container=data.get("container"),
            engine=data.get("engine"),
            metrics=data.get("metrics"),
        )

    def entry(self) -> dict[str, Any]:
        """This batch's line in ``run.json`` (with the objective and final metrics, so
        ``faice results`` reads one file)."""
        entry = {
            "id": self.batch_id,
            "index": self.batch_index,
            "state": self.state.value,
            "parameters": self.parameters,
            "failureClass": self.failure_class.value if self.failure_class else None,
            "message": self.message,
            "gpus": self.gpus,
            "seconds": self.timings.get("total"),
        }
        if self.metrics:
            entry["metrics"] = {"objective": self.metrics.get("objective"), "final": self.metrics.get("final") or {}}
        return entry


def new_batch_record(
    batch_id: str,
    index: int | None,
    parameters: dict[str, Any] | None,
    *,
    run_id: str | None,
    command: list[str] | None,
    state: BatchState = BatchState.RUNNING,
    failure_class: FailureClass | None = None,
    message: str | None = None,
    image: dict[str, Any] | None = None,
    engine: dict[str, Any] | None = None,
) -> BatchRecord:
    """The one way to start a batch record, whether the batch runs or ends before it could."""
    record = BatchRecord(
        batch_id=batch_id,
        batch_index=index,
        run_id=run_id,
        parameters=dict(parameters or {}),
        state=state,
        command=command,
        process={"returnCode": None, "executed": False, **STREAM_FILES},
        image=image,
        engine=engine,
        started=now_iso(),
    )
    if failure_class is not None:
        record.fail(failure_class, message or str(failure_class))
        record.debug_info = [record.message or ""]
        record.finished = record.started
    return record


def _enum(kind: type[enum.Enum], value: Any, default: Any) -> Any:
    try:
        return kind(value)
    except ValueError:
        return default


# ----------------------------------------------------------------------------- run directory


def batch_dir(outdir: Path, batch_id: str) -> Path:
    return Path(outdir) / "batches" / batch_id


def write_batch_record(outdir: Path, record: BatchRecord, *, redact: Redact = REDACTOR.redact) -> None:
    """The only writer of ``result.json``."""
    atomic_write_json(batch_dir(outdir, record.batch_id) / RESULT_FILE, record.to_dict(), redact=redact)


def read_batch_record(outdir: Path, batch_id: str) -> BatchRecord | None:
    data = read_json(batch_dir(outdir, batch_id) / RESULT_FILE)
    return BatchRecord.from_dict(data) if isinstance(data, dict) else None


def default_outdir(run_id: str, root: Path | None = None) -> Path:
    name = f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{run_id}"
    return (root or Path("faice-runs")) / name


def prepare_outdir(outdir: Path, *, resume: bool) -> dict[str, Any] | None:
    """Create ``outdir``; refuse a non-empty one unless resuming. Returns the old run.json."""
    if outdir.exists() and not outdir.is_dir():
        raise UsageError(f"--outdir {outdir}: exists and is not a directory")
    if resume:
        is_run = (outdir / RUN_FILE).exists() or (outdir / "batches").exists()
        if not is_run and outdir.exists() and any(outdir.iterdir()):
            raise UsageError(f"--outdir {outdir}: --resume needs a faice run directory (no {RUN_FILE})")
        outdir.mkdir(parents=True, exist_ok=True)
        previous = read_json(outdir / RUN_FILE)
        if isinstance(previous, dict):
            refuse_live_run(outdir, previous)
        return previous if isinstance(previous, dict) else None
    if outdir.exists() and any(outdir.iterdir()):
        raise UsageError(
            f"--outdir {outdir}: directory is not empty; faice never merges two runs",
            hint="choose another --outdir, or add --resume to continue the run recorded there",
        )
    outdir.mkdir(parents=True, exist_ok=True)
    return None


def refuse_live_run(outdir: Path, run: dict[str, Any]) -> None:
    """``--resume`` of a run whose faice process still runs it would run its running batches
    a second time, into the same directories (deleting their live ``outputs/``): refuse.
    A process on another host counts as alive; a resume there tells a dead one apart."""
    from faice.runtime.docker import owner_alive

    owner = run.get("owner")
    if run.get("state") != RunState.RUNNING.value or not isinstance(owner, str) or not owner_alive(owner):
        return
    host, _, rest = owner.partition(":")
    raise UsageError(
        f"--outdir {outdir}: run {run.get('runId')} is still going (faice process {rest.partition(':')[0]} "
        f"on {host}); --resume continues a run only after it ended",
        hint="wait until it ends, or stop it (Ctrl-C or SIGTERM to that process); a run whose host lost "
             "its process is resumed on that host first",
    )


# ----------------------------------------------------------------------------- run record


def pending_entry(batch_id: str, index: int | None, parameters: dict[str, Any] | None,
                  state: BatchState = BatchState.PENDING) -> dict[str, Any]:
    """The ``run.json`` line of a batch that has no record yet."""
    return {"id": batch_id, "index": index, "state": state.value, "parameters": parameters or {},
            "failureClass": None, "message": None, "gpus": [], "seconds": None}


def run_state(entries: Iterable[dict[str, Any]], phase: RunState | str | None = None) -> RunState:
    """The state of a run from its batch entries; ``phase`` says whether the run still goes on."""
    states = {e.get("state") for e in entries}
    current = _enum(RunState, phase, None)
    if not states:
        return current or RunState.SUCCEEDED
    if states <= {BatchState.SUCCEEDED.value, BatchState.STOPPED.value}:
        return RunState.SUCCEEDED
    if states - {s.value for s in FINAL_STATES}:
        return current if current in (RunState.RUNNING, RunState.CANCELLED) else RunState.INCOMPLETE
    if BatchState.CANCELLED.value in states:
        return RunState.CANCELLED
    return RunState.FAILED


def write_run_record(
    outdir: Path,
    header: dict[str, Any],
    entries: list[dict[str, Any]],
    *,
    phase: RunState | None = None,
    redact: Redact = REDACTOR.redact,
) -> dict[str, Any]:
    """The only writer of ``run.json``: header fields, state, counts and one entry per batch."""
    entries = sorted(entries, key=lambda e: (e.get("index") is None, e.get("index") or 0))
    counts: dict[str, int] = {}
    for entry in entries:
        name = entry.get("state") or BatchState.PENDING.value
        counts[name] = counts.get(name, 0) + 1
    data = {k: v for k, v in header.items() if k not in ("batches", "counts", "state")}
    data.update(state=run_state(entries, phase or header.get("state")).value, counts=counts,
                batches=entries, updated=now_iso())
    atomic_write_json(Path(outdir) / RUN_FILE, data, redact=redact)
    return data


def mark_interrupted(outdir: Path, owner: str) -> bool:
    """The faice process ``owner`` died while its run in ``outdir`` was running: say so in
    ``run.json`` (found at the next start, from the dead run's temp dir). A run.json of another
    process, or one that ended, is left alone."""
    data = read_run_record(outdir)
    if data is None or data.get("owner") != owner or data.get("state") != RunState.RUNNING.value:
        return False
    data.update(state=RunState.INTERRUPTED.value, interrupted=now_iso(), updated=now_iso())
    atomic_write_json(Path(outdir) / RUN_FILE, data)  # its values were masked when written
    return True


def read_run_record(outdir: Path) -> dict[str, Any] | None:
    data = read_json(Path(outdir) / RUN_FILE)
    return data if isinstance(data, dict) else None


def batch_records(outdir: Path) -> dict[str, BatchRecord]:
    """Every ``batches/*/result.json`` of a run directory, by batch id."""
    root = Path(outdir) / "batches"
    found: dict[str, BatchRecord] = {}
    for path in sorted(root.glob(f"*/{RESULT_FILE}")) if root.is_dir() else []:
        data = read_json(path)
        if isinstance(data, dict):
            record = BatchRecord.from_dict(data)
            found[record.batch_id] = record
    return found


def rebuild_run_record(outdir: Path, live: dict[str, BatchState] | None = None,
                       header: dict[str, Any] | None = None,
                       described: dict[str, tuple[int | None, dict[str, Any] | None]] | None = None
                       ) -> dict[str, Any]:
    """Rewrite ``run.json`` from every batch record; ``live`` gives the state of batches
    whose record is not final yet (a scheduler's view), ``header`` fields to set and
    ``described`` the (index, parameters) of batches that have no record yet."""
    outdir = Path(outdir)
    old = read_run_record(outdir) or {}
    known: dict[str, dict[str, Any]] = {
        str(e["id"]): e for e in old.get("batches") or [] if isinstance(e, dict) and e.get("id")}
    records = batch_records(outdir)
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
        current = state or _enum(BatchState, entry.get("state"), BatchState.PENDING)
        if current.is_final and record is None:
            current = BatchState.PENDING  # no record yet: not final as far as anyone can tell
        index, parameters = (described or {}).get(batch_id, (entry.get("index"), entry.get("parameters")))
        entries.append(pending_entry(batch_id, index, parameters, current))
    merged = {**old, **(header or {})}
    live_run = any(e["state"] not in {s.value for s in FINAL_STATES} for e in entries)
    phase = RunState.RUNNING if live_run and live else None
    return write_run_record(outdir, merged, entries, phase=phase)
