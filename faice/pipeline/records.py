"""The two record types of a run: a batch record (``result.json``) and the run record's
batch entries (``run.json``), with their states and failure classes.

A record of a local, Slurm or agency batch has one shape, described by
``schemas/records.schema.json``; :mod:`faice.pipeline.rundir` is where they are written and read.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

# The stream files a batch record names (``process.stdout``/``stderr``), beside its result.json.
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
    runtime: str | None = None  # the container runtime that ran the batch (docker, podman, ...)
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
            "runtime": self.runtime,
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
            state=enum_or(BatchState, data.get("state"), BatchState.FAILED),
            failure_class=enum_or(FailureClass, failure, FailureClass.ENGINE) if failure else None,
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
            runtime=data.get("runtime"),
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


def enum_or(kind: type[enum.Enum], value: Any, default: Any) -> Any:
    try:
        return kind(value)
    except ValueError:
        return default


# ----------------------------------------------------------------------------- run record


def pending_entry(batch_id: str, index: int | None, parameters: dict[str, Any] | None,
                  state: BatchState = BatchState.PENDING) -> dict[str, Any]:
    """The ``run.json`` line of a batch that has no record yet."""
    return {"id": batch_id, "index": index, "state": state.value, "parameters": parameters or {},
            "failureClass": None, "message": None, "gpus": [], "seconds": None}


def run_state(entries: Iterable[dict[str, Any]], phase: RunState | str | None = None, *,
              complete: bool = True) -> RunState:
    """The state of a run from its batch entries; ``phase`` says whether the run still goes on.
    ``complete=False``: batches are still to come that have no entry (a search cancelled
    before its budget was spent), so its entries alone can't make it succeeded."""
    states = {e.get("state") for e in entries}
    current = enum_or(RunState, phase, None)
    if not complete and current == RunState.CANCELLED:
        return current
    if not states:
        return current or RunState.SUCCEEDED
    if states <= {BatchState.SUCCEEDED.value, BatchState.STOPPED.value}:
        return RunState.SUCCEEDED
    if states - {s.value for s in FINAL_STATES}:
        return current if current in (RunState.RUNNING, RunState.CANCELLED) else RunState.INCOMPLETE
    if BatchState.CANCELLED.value in states:
        return RunState.CANCELLED
    return RunState.FAILED


# ----------------------------------------------------------------------------- CC-Agency batches

AGENCY_STATES = {"registered": "pending", "scheduled": "pending", "processing": "running"}


def agency_batch_record(batch: dict[str, Any]) -> dict[str, Any]:
    """A CC-Agency batch document as a faice batch record: the record its runner left (faice's
    server keeps it in the batch's history), else one built from the document. Shared by the
    server's web view and ``faice exec --outdir`` of an agency run."""
    from faice.secrets import is_protected_key

    history = batch.get("history") or []
    found = next((h["ccagent"] for h in reversed(history) if isinstance(h.get("ccagent"), dict)), None)
    state = AGENCY_STATES.get(batch["state"], batch["state"])
    if found is not None and found.get("batchId"):
        record = dict(found)
    else:
        inputs: dict[str, Any] = batch["inputs"] if isinstance(batch.get("inputs"), dict) else {}
        parameters = {k: v for k, v in inputs.items()
                      if isinstance(v, (int, float, str, bool)) and not is_protected_key(k)}
        record = new_batch_record(batch["_id"], batch.get("batchesListIndex"), parameters, run_id=batch.get("experimentId"),
                                  command=None, state=enum_or(BatchState, state, BatchState.PENDING)).to_dict()
        record["started"] = _iso((history[0] if history else {}).get("time"))
    if state == "cancelled" and record.get("state") == BatchState.STOPPED.value:
        state = BatchState.STOPPED.value  # faice's server: CC-Agency's "cancelled" of a batch stopped early
    record.update(batchId=batch["_id"], batchIndex=batch.get("batchesListIndex"), state=state)
    if state in ("failed", "cancelled") and not record.get("message"):
        record["message"] = next((h.get("debugInfo") for h in reversed(history) if h.get("debugInfo")), None)
    return record


def _iso(seconds: Any) -> str | None:
    if not isinstance(seconds, (int, float)):
        return None
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
