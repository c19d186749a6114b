"""What one Slurm array task runs on its compute node: one batch through the batch pipeline.

    python -m faice.engines.slurm.task SUBMISSION_DIR TASK_ID

The task takes (reads and deletes) its spec ``SUBMISSION_DIR/tasks/TASK_ID.json``, masks the
secrets listed there, and runs :func:`faice.pipeline.batch.run_batch` for its batch, which
writes ``batches/<id>/`` into the shared run directory. The GPUs Slurm allocated are the only
ones the task's allocator hands out. SIGTERM (``scancel``, time limit) stops the container
and still writes the batch's record. The ``metrics.earlyStopping`` rule judges the batch
against the run's other tasks (:func:`shared_stopper`).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

from faice.engines.slurm import rundir
from faice.pipeline.host import Host, failed_before_start
from faice.pipeline.options import RunOptions
from faice.pipeline.plan import BatchPlan, plan_batches
from faice.pipeline.records import BatchRecord, FailureClass
from faice.pipeline.rundir import RunDir
from faice.pipeline.stopping import SharedStopper
from faice.red.experiment import Batch, Experiment
from faice.red.metrics import MetricsSpec
from faice.runtime.gpus import host_allocator
from faice.secrets import Redactor


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


def load_task(submission: Path, task_id: int) -> tuple[BatchPlan, RunOptions, str, Redactor]:
    """This task's plan, the run's options, its run id and a redactor of its secrets."""
    spec = rundir.take_task_spec(submission, task_id)
    redactor = Redactor(spec.get("protected") or [])
    experiment = Experiment.of_batch(spec["source"], spec["data"], Batch(**spec["batch"]))
    stored = rundir.read_stored(submission / "options.json")
    options = RunOptions.from_dict(stored).replace(parallel=1)
    (plan,) = plan_batches(experiment)
    return plan, options, str(stored.get("run_id")), redactor


def say(message: str, redactor: Redactor | None = None) -> None:
    print(redactor.redact(message) if redactor else message, file=sys.stderr, flush=True)


def shared_stopper(metrics: MetricsSpec | None, options: RunOptions, submission: Path,
                   outdir: Path) -> SharedStopper | None:
    """The ``metrics.earlyStopping`` rule of a batch on a node (None without one), over what
    the batches that run apart share: the submission's live series and the run's finished
    batches, or the directory the run's options name (an agency's: every submission of the
    experiment)."""
    if options.stopping_dir:
        return SharedStopper.in_directory(metrics, Path(options.stopping_dir))
    return SharedStopper.for_spec(metrics, live_dir=submission / "live", batches_dir=RunDir(outdir).batches)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {__name__}", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("submission", type=Path)
    parser.add_argument("task_id", type=int)
    args = parser.parse_args(argv)
    received: list[int] = []
    cancel = threading.Event()

    def stop(signum: int, _frame: object) -> None:
        received.append(signum)
        cancel.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    submission = args.submission.resolve()
    outdir = submission.parent.parent
    try:
        plan, options, run_id, redactor = load_task(submission, args.task_id)
    except FileNotFoundError:
        say(f"faice task: no spec for task {args.task_id} in {submission} (already run or cancelled)")
        return 1
    gpu_ids = docker_gpu_ids(dict(os.environ))
    # The Docker daemon counts host GPUs; the renumbered ids must not restrict them again.
    os.environ.pop("CUDA_VISIBLE_DEVICES", None)
    node = os.uname().nodename
    engine = {"name": "slurm", "node": node, "jobId": os.environ.get("SLURM_ARRAY_JOB_ID"),
              "taskId": args.task_id}
    say(f"faice task: batch {plan.id} (index {plan.index}) on {node}, GPUs: {gpu_ids or 'none'}")
    result: list[BatchRecord] = []

    stopper = shared_stopper(plan.metrics, options, submission, outdir)

    def work() -> None:
        try:
            host = Host(host_allocator(None, busy=options.gpu_busy))  # reads Slurm's allocation itself
            result.append(host.run_alone(plan, run_id=run_id, outdir=outdir, redactor=redactor, options=options,
                                         cancel=cancel, engine=engine,
                                         stop_rule=stopper.check if stopper is not None else None))
        except Exception as exc:  # a bug: the batch still gets a record, the log the reason
            import traceback

            say(f"faice task: internal error: {type(exc).__name__}: {exc}\n{traceback.format_exc()}", redactor)
            result.append(failed_before_start(plan, run_id, outdir, f"internal error: {type(exc).__name__}: {exc}",
                                              redactor=redactor, engine=engine))
        finally:
            if stopper is not None:
                stopper.done(plan.id)  # its live series goes, however the batch ended

    worker = threading.Thread(target=work, name="faice-task", daemon=True)
    worker.start()
    announced = False
    while worker.is_alive():
        worker.join(0.2)
        if received and not announced:
            announced = True
            say(f"faice task: received signal {received[0]}: stopping the batch")
    record = result[0]
    if received and record.failure_class in (FailureClass.CONNECTOR, FailureClass.ENGINE):
        # scancel signals the whole job step: a connector program may have died of it
        # before the batch saw its cancel event. The stop is the reason, not the connector.
        record.fail(FailureClass.CANCELLED, f"stopped by signal {received[0]} (scancel or the time limit) while: "
                                            f"{record.message}")
        RunDir(outdir).write_record(record, redact=redactor.redact)
    say(f"faice task: batch {plan.id} {record.state}" + (f": {record.message}" if record.message else ""), redactor)
    return 0 if record.state == "succeeded" else 1


if __name__ == "__main__":
    sys.exit(main())
