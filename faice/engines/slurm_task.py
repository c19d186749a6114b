"""What one Slurm array task runs on its compute node: one batch, through the local engine.

    python -m faice.engines.slurm_task SUBMISSION_DIR TASK_ID

The task takes (reads and deletes) its spec ``SUBMISSION_DIR/tasks/TASK_ID.json``, masks the
secrets listed there, and runs the batch with the local engine's pipeline (Docker, one batch
at a time), which writes ``batches/<id>/`` into the shared run directory. The GPUs Slurm
allocated become the Docker device ids. SIGTERM (``scancel``, time limit) stops the container
and still writes the batch's record.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from faice import records
from faice.engines import slurm_rundir as rundir
from faice.errors import ConnectorError, FaiceError
from faice.secrets import REDACTOR


def docker_gpu_ids(environ: dict[str, str]) -> str | None:
    """The host GPU ids Slurm gave this task, as Docker device ids.

    ``CUDA_VISIBLE_DEVICES`` may be renumbered from 0 when Slurm confines devices with cgroups,
    but the Docker daemon lives outside the task's cgroup and counts the node's GPUs, so the
    node-level ids in ``SLURM_JOB_GPUS`` (or ``SLURM_STEP_GPUS``) come first.
    """
    for name in ("SLURM_STEP_GPUS", "SLURM_JOB_GPUS", "CUDA_VISIBLE_DEVICES"):
        value = environ.get(name, "").strip()
        if value and value not in ("NoDevFiles",):
            return value
    return None


def build_options(stored: dict[str, Any], gpu_ids: str | None):
    """The local engine's RunOptions for this task: the run's options, one batch at a time."""
    from faice.engines.local import RunOptions

    fields = {f for f in getattr(RunOptions, "__dataclass_fields__", {})}
    values = {k: v for k, v in stored.items() if k in fields}
    overrides = {"parallel": 1, "gpu_ids": gpu_ids, "batch_records_only": True, "run_id": stored.get("run_id")}
    values.update({k: v for k, v in overrides.items() if k in fields})
    return RunOptions(**values)


def load_task(submission: Path, task_id: int):
    """The Experiment of this task (its one batch) and the run options."""
    from faice.red.experiment import Batch, Experiment

    spec = rundir.take_task_spec(submission, task_id)
    REDACTOR.add_all(spec.get("protected") or [])
    batch = Batch(**spec["batch"])
    experiment = Experiment(spec["source"], spec["data"], [batch])
    stored = rundir.read_json(submission / "options.json")
    return experiment, stored


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m faice.engines.slurm_task", description=__doc__.splitlines()[0])
    parser.add_argument("submission", type=Path)
    parser.add_argument("task_id", type=int)
    args = parser.parse_args(argv)
    stop = threading.Event()

    def on_signal(signum, _frame) -> None:
        print(f"faice task: received signal {signum}: stopping the batch", file=sys.stderr, flush=True)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    submission = args.submission.resolve()
    outdir = submission.parent.parent
    try:
        experiment, stored = load_task(submission, args.task_id)
    except FileNotFoundError:
        print(f"faice task: no spec for task {args.task_id} in {submission} (already run or cancelled)", file=sys.stderr)
        return 1
    gpu_ids = docker_gpu_ids(dict(os.environ))
    # The Docker daemon counts host GPUs; the renumbered ids must not restrict them again.
    os.environ.pop("CUDA_VISIBLE_DEVICES", None)
    batch = experiment.batches[0]
    print(f"faice task: batch {batch.id} (index {batch.index}) on {os.uname().nodename}, GPUs: {gpu_ids or 'none'}", file=sys.stderr, flush=True)
    try:
        from faice.engines.local import run_experiment

        options = build_options(stored, gpu_ids)
        summary = run_experiment(experiment, options, outdir, only={batch.id}, stop=stop)
    except FaiceError as exc:
        print(REDACTOR.redact(f"faice task: error: {exc}"), file=sys.stderr, flush=True)
        if records.read_result(outdir, batch.id) is None:
            write_failure_record(outdir, experiment, stored, exc)
        return 1
    except Exception as exc:  # a bug: keep the traceback in the task's log, masked
        import traceback

        text = "".join(traceback.format_exception(exc))
        print(REDACTOR.redact(f"faice task: internal error: {type(exc).__name__}: {exc}\n{text}"), file=sys.stderr, flush=True)
        return 1
    state = _batch_state(summary, outdir, batch.id)
    print(f"faice task: batch {batch.id} {state}", file=sys.stderr, flush=True)
    return 0 if state == "succeeded" else 1


def write_failure_record(outdir: Path, experiment, stored: dict[str, Any], exc: FaiceError) -> None:
    """The record of a batch that failed before its pipeline started (preflight on the node:
    connector checks, image pull, Docker unreachable), so it reads like a local run's."""
    batch = experiment.batches[0]
    failure = "connector" if isinstance(exc, ConnectorError) or "connector" in exc.message else "engine"
    message = str(exc)
    records.atomic_write_text(records.batch_dir(outdir, batch.id) / "stderr.txt", message + "\n")
    records.write_result(outdir, batch.id, {
        "batchId": batch.id, "batchIndex": batch.index, "runId": stored.get("run_id"),
        "parameters": batch.parameters, "state": "failed", "failureClass": failure,
        "message": message.splitlines()[0], "command": None,
        "process": {"returnCode": None, "executed": False}, "inputs": {}, "outputs": {},
        "debugInfo": [message], "timings": {}, "finished": records.now_iso(),
        "engine": {"name": "slurm", "node": os.uname().nodename},
    })


def _batch_state(summary: Any, outdir: Path, batch_id: str) -> str:
    record = records.read_result(outdir, batch_id)
    if record is not None:
        return str(record.get("state"))
    return str(getattr(summary, "state", "failed"))


if __name__ == "__main__":
    sys.exit(main())
