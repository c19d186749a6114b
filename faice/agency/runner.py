"""How the server runs one batch: the same batch pipeline as ``faice exec`` on this host.

:class:`PipelineRunner` hands the batch to :func:`faice.engines.local.run_experiment` (GPU
assignment, RAM limit, connectors, records), stops it through the run's ``stop`` event when
the batch is cancelled, and reads the batch record it writes (DESIGN §4). The dispatcher
only knows the small :class:`Runner` interface, so other pipelines (Slurm) plug in.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

BATCH_LABEL = "org.faice.batch"
RUN_LABEL = "org.faice.run"


@dataclass
class BatchJob:
    batch_id: str
    experiment_id: str
    index: int
    attempt: int
    red: dict[str, Any]  # redVersion, cli, container, inputs, outputs — secrets filled in
    workdir: Path
    disable_connector_validation: bool = False


@dataclass
class Outcome:
    state: str  # succeeded | failed | cancelled
    debug_info: str | None = None
    stdout: str | None = None
    stderr: str | None = None
    record: dict[str, Any] | None = None
    retryable: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


class Runner(Protocol):
    def run(self, job: BatchJob, cancel: threading.Event) -> Outcome: ...

    def cleanup(self, batch_id: str) -> None: ...


def default_runner() -> Runner:
    return PipelineRunner()


def _remove_containers(batch_id: str) -> None:
    try:
        import docker

        client = docker.from_env(timeout=60)
    except Exception:  # no engine: nothing can be left over
        return
    try:
        for container in client.containers.list(all=True, filters={"label": f"{BATCH_LABEL}={batch_id}"}):
            container.remove(force=True)
    except Exception:
        pass
    finally:
        client.close()


class PipelineRunner:
    """The local engine's batch pipeline, restricted to one batch."""

    def run(self, job: BatchJob, cancel: threading.Event) -> Outcome:
        from faice.engines.local import RunOptions, run_experiment
        from faice.errors import FaiceError
        from faice.red.experiment import Batch, Experiment

        red = job.red
        experiment = Experiment(
            source=f"experiment {job.experiment_id}",
            data={k: v for k, v in red.items() if k not in {"inputs", "outputs"}},
            batches=[Batch(index=job.index, id=job.batch_id, inputs=red["inputs"], outputs=red["outputs"])],
        )
        options = RunOptions()
        for name, value in (("parallel", 1), ("disable_connector_validation", job.disable_connector_validation), ("progress", False)):
            if hasattr(options, name):
                setattr(options, name, value)
        outdir = job.workdir / f"attempt-{job.attempt}"
        try:
            run_experiment(experiment, options, outdir, only={job.batch_id}, stop=cancel)
        except FaiceError as exc:
            if cancel.is_set():
                return Outcome("cancelled", "cancelled")
            return Outcome("failed", str(exc))
        return read_record(outdir / "batches" / job.batch_id, cancelled=cancel.is_set())

    def cleanup(self, batch_id: str) -> None:
        _remove_containers(batch_id)


# The most of a stream read back into memory; the store keeps only its cap of this tail.
LOG_READ_LIMIT = 64 * 2**20


def read_tail(path: Path, limit: int | None = None) -> tuple[str, int]:
    """(text, bytes skipped): the last ``limit`` bytes of a stream file.

    A cut tail starts after its first newline, so that a secret cut in half at the start
    (which the redactor would no longer recognise) is dropped with the rest.
    """
    limit = LOG_READ_LIMIT if limit is None else limit
    with open(path, "rb") as handle:
        size = handle.seek(0, 2)
        skipped = max(0, size - limit)
        handle.seek(skipped)
        data = handle.read()
    if skipped:
        newline = data.find(b"\n")
        cut = newline + 1 if newline >= 0 else len(data)
        skipped, data = skipped + cut, data[cut:]
    return data.decode("utf-8", "replace"), skipped


def read_record(batch_dir: Path, *, cancelled: bool = False) -> Outcome:
    """The outcome a batch record (result.json, stdout.txt, stderr.txt) describes."""
    skipped: dict[str, int] = {}

    def text(name: str) -> str | None:
        path = batch_dir / f"{name}.txt"
        if not path.exists():
            return None
        content, skipped[name] = read_tail(path)
        return content

    try:
        record = json.loads((batch_dir / "result.json").read_text())
    except (OSError, ValueError) as exc:
        if cancelled:
            return Outcome("cancelled", "cancelled")
        return Outcome("failed", f"batch record missing or unreadable: {exc}")
    state = record.get("state", "failed")
    if cancelled or record.get("failureClass") == "cancelled":
        state = "cancelled"
    debug = record.get("debugInfo")
    if isinstance(debug, list):
        debug = "\n".join(str(d) for d in debug)
    # Like CC-Agency, any failure gets the remaining attempts (the client can disable retries).
    retryable = state != "cancelled"
    stdout, stderr = text("stdout"), text("stderr")
    return Outcome(state, debug, stdout, stderr, record, retryable, extra={"skipped": skipped})
