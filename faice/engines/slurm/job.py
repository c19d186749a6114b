"""Slurm job arrays of faice batches: submit, poll, cancel (the engine's public job API).

Each array task runs :func:`faice.pipeline.batch.run_batch` for one batch on its compute node
(:mod:`faice.engines.slurm.task`) and writes the same records into the shared run directory
(:mod:`faice.engines.slurm.rundir`). The agency server and ``faice status/cancel --outdir`` use:

* ``submit_batches(experiment, options, outdir, batches=None) -> SlurmJob``
* ``SlurmJob.poll() -> dict[batch_id, state]``, ``.cancel(batch_ids)``; ``watch(jobs, on_update)``: the
  one poll loop (:mod:`faice.engines.slurm.watcher`, where Slurm is polled)
* ``open_run(outdir) -> list[SlurmJob]``, ``refresh_run(outdir) -> dict`` (rewrites run.json),
  ``cancel_run(outdir, batch_id=None)``

With ``execution.settings.workers`` the submission is packed instead: one array of worker
allocations that claim the batches (:mod:`faice.engines.slurm.packed`, ``.worker``,
``.claims``); its :class:`PackedJob` has the same interface, so every caller above works alike.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from faice.engines.slurm import client as slurm_cli
from faice.engines.slurm import rundir
from faice.engines.slurm.claims import ClaimQueue
from faice.engines.slurm.packed import WORKER_MODULE, PackedJob
from faice.engines.slurm.settings import SlurmSettings, sbatch_options
from faice.engines.slurm.watcher import POLL_INTERVAL_S, SlurmView, current_states, watch
from faice.errors import EngineError, UsageError
from faice.pipeline.options import RunOptions
from faice.pipeline.records import FINAL_STATES, BatchState, FailureClass, new_run_id, now_iso
from faice.pipeline.rundir import RunDir
from faice.red.experiment import Batch, Experiment
from faice.secrets import REDACTOR

SCHEDULED, PROCESSING = BatchState.PENDING, BatchState.RUNNING
SUCCEEDED, FAILED, CANCELLED = BatchState.SUCCEEDED, BatchState.FAILED, BatchState.CANCELLED
FINAL = FINAL_STATES
TASK_MODULE = "faice.engines.slurm.task"

# Slurm's end states that left no record behind, and the failure class they mean.
FAILURE_CLASS = {
    "CANCELLED": FailureClass.CANCELLED,
    "TIMEOUT": FailureClass.TIMEOUT,
    "DEADLINE": FailureClass.TIMEOUT,
    "OUT_OF_MEMORY": FailureClass.OOM,
    "PREEMPTED": FailureClass.CANCELLED,
}
RECORD_GRACE_S = rundir.RECORD_GRACE_S
__all__ = ["POLL_INTERVAL_S", "current_states", "watch"]  # where Slurm is polled: faice.engines.slurm.watcher


class SlurmJob(rundir.Submission):
    """One submitted job array: array task ``i`` runs batch ``batch_ids[i]``."""

    def __init__(self, outdir: Path, entry: dict[str, Any]):
        super().__init__(outdir, entry)
        self._final_since: dict[int, float] = {}
        self._states: dict[str, BatchState] = {}

    def wants_queue(self) -> bool:
        """Whether the next poll asks squeue (some batch is not final yet)."""
        return any(self._states.get(b) not in FINAL for b in self.batch_ids)

    def poll(self, only: set[str] | None = None, view: SlurmView | None = None) -> dict[str, BatchState]:
        """The state of every batch of this array (or of those in ``only``: a later array of
        the same run owns the others); writes a failure record for tasks that ended without
        one (cancelled while pending, killed by Slurm, node failure). ``view``: the watcher's
        round (one squeue for every job it follows); default: this array alone."""
        asked = [(t, b) for t, b in enumerate(self.batch_ids)
                 if (only is None or b in only) and self._states.get(b) not in FINAL]
        view = view or SlurmView([self.job_id])
        slurm_states = view.task_states(self.job_id, [t for t, _ in asked]) if asked else {}
        states: dict[str, BatchState] = {}
        for task_id, batch_id in enumerate(self.batch_ids):
            if only is not None and batch_id not in only:
                continue
            if self._states.get(batch_id) in FINAL:
                states[batch_id] = self._states[batch_id]
                continue
            states[batch_id] = self._task_state(task_id, batch_id, slurm_states.get(task_id))
        self._states.update(states)
        return dict(states)

    def _task_state(self, task_id: int, batch_id: str, task: slurm_cli.TaskState | None) -> BatchState:
        if task is not None and not task.is_final:
            return PROCESSING if task.is_running else SCHEDULED
        record = self.rundir.read_record(batch_id)
        if record is not None and record.is_final:
            return record.state
        first = self._final_since.setdefault(task_id, time.monotonic())
        cancelled = task is not None and task.state == "CANCELLED"
        if not cancelled and time.monotonic() - first < RECORD_GRACE_S:
            return PROCESSING
        return self._record_lost_task(task_id, batch_id, task)

    def _record_lost_task(self, task_id: int, batch_id: str, task: slurm_cli.TaskState | None) -> BatchState:
        """Write the record of a batch whose task never wrote one."""
        rundir.remove_task_specs(self.submission_dir, [task_id])
        log = rundir.log_path(self.outdir, self.job_id, task_id)
        if task is None:
            slurm_state, message = "UNKNOWN", "Slurm no longer knows the task and it left no record"
        else:
            slurm_state = task.state
            message = f"Slurm task {self.job_id}_{task_id} ended {task.state}"
            if task.reason and task.reason != "None":
                message += f" ({task.reason})"
            if task.exit_code is not None:
                message += f", exit code {task.exit_code}"
        return self.record_lost(batch_id, FAILURE_CLASS.get(slurm_state, FailureClass.ENGINE), message,
                                engine={"taskId": task_id, "slurmState": slurm_state},
                                logs=rundir.tail(log), logs_title=f"task output ({log.name})")

    def cancel(self, batch_ids: Iterable[str] | None = None) -> None:
        """Cancel the array or some batches: running tasks get SIGTERM and stop their
        container; pending ones never start (their secret-bearing specs are removed)."""
        if batch_ids is None:
            task_ids = None
        else:
            wanted = set(batch_ids)
            task_ids = [i for i, b in enumerate(self.batch_ids) if b in wanted]
            if not task_ids:
                return
        try:
            slurm_cli.scancel(self.job_id, task_ids)
        finally:
            # Tasks that already started have taken (deleted) their spec; the rest never will.
            queued = slurm_cli.queued_tasks(self.job_id)
            pending = [t for t, s in queued.items() if not s.is_running and (task_ids is None or t in task_ids)]
            rundir.remove_task_specs(self.submission_dir, pending)


Job = SlurmJob | PackedJob

# ----------------------------------------------------------------------------- submission


def _batch_data(batch: Batch) -> dict[str, Any]:
    return {
        "index": batch.index,
        "id": batch.id,
        "inputs": batch.inputs,
        "outputs": batch.outputs,
        "parameters": batch.parameters,
        "doc": batch.doc,
        "cloud": batch.cloud,
    }


def _shared_data(experiment: Experiment) -> dict[str, Any]:
    """The RED document a task needs (cli, container, execution), without other batches."""
    return {k: v for k, v in experiment.data.items() if k not in ("batches", "inputs", "outputs")}


def job_script(settings: SlurmSettings, submission: Path, run_id: str) -> str:
    """The batch script: hand over to faice's task entry point on the node (or, packed, to a
    worker that pulls batches from the queue)."""
    if settings.packed:
        command = [settings.python, "-m", WORKER_MODULE, str(submission)]
        return (
            "#!/bin/sh\n"
            f"# faice run {run_id}: every array task is a worker that claims batches from queue/\n"
            f"exec {shlex.join(command)}\n"
        )
    command = [settings.python, "-m", TASK_MODULE, str(submission)]
    return (
        "#!/bin/sh\n"
        f"# faice run {run_id}: array task N runs the batch in tasks/N.json\n"
        f'exec {shlex.join(command)} "$SLURM_ARRAY_TASK_ID"\n'
    )


def submit_batches(
    experiment: Experiment,
    options: RunOptions,
    outdir: Path,
    batches: list[Batch] | None = None,
    *,
    run_id: str | None = None,
    max_running: int | None = None,
    protected: Iterable[str] | None = None,
    open_for: int | None = None,
) -> Job:
    """Submit one job array with a task per batch (of ``batches``, default: all).

    ``protected``: the secrets the tasks must mask (default: every value registered with
    the process's redactor; a long-running server passes only the batch's own).
    ``open_for``: a packed submission whose queue stays open for this many batches in all,
    added while the workers run (:func:`add_batch`; a search's trials)."""
    settings = SlurmSettings.from_experiment(experiment)
    outdir = Path(outdir).resolve()
    batches = experiment.batches if batches is None else batches
    if open_for is not None and not settings.packed:
        raise EngineError("Slurm engine: only a packed submission (workers) takes batches while it runs")
    if not batches and not open_for:
        raise EngineError("Slurm engine: no batches to submit")
    previous = rundir.read_submissions(outdir)
    run_id = run_id or (previous[0]["runId"] if previous else new_run_id())
    tag, submission = rundir.new_submission_dir(outdir)
    rundir.write_json(submission / "options.json", {**options.to_dict(), "run_id": run_id})
    shared = _shared_data(experiment)
    protected = sorted(set(protected)) if protected is not None else REDACTOR.values()
    for task_id, batch in enumerate(batches):
        _write_spec(outdir, submission, task_id, batch, {"source": experiment.source, "data": shared,
                                                          "protected": protected})
    script = submission / "job.sh"
    script.write_text(job_script(settings, submission, run_id), encoding="utf-8")
    limit = max_running or settings.max_running
    packed: dict[str, Any] | None = None
    if settings.packed:
        assert settings.workers is not None
        packed = {"workers": min(settings.workers, open_for or len(batches)),
                  "batchesPerWorker": settings.batches_per_worker,
                  "leaseSeconds": settings.lease_seconds, "pollInterval": settings.poll_interval,
                  "runtime": options.runtime_for(str(experiment.container.get("engine") or "docker"))}
        queue = ClaimQueue(submission / "queue")
        queue.create(len(batches))
        if open_for:
            queue.hold_open()  # before sbatch: a worker that starts at once must not find it closed
            # What add_batch needs to write the specs of the batches to come.
            rundir.write_task_spec(submission, rundir.OPEN_SPEC, {"source": experiment.source, "data": shared,
                                                           "protected": protected})
        rundir.write_json(submission / rundir.PACK_FILE, packed)
    argv = sbatch_options(
        settings,
        experiment.container_settings,
        job_name=f"faice-{run_id}",
        array=slurm_cli.array_spec(packed["workers"] if packed else len(batches), limit),
        output=rundir.log_pattern(outdir),
        workdir=str(outdir),
        batches_per_task=settings.batches_per_worker if packed else 1,
    )
    try:
        job_id = slurm_cli.sbatch(str(script), argv)
    except BaseException:
        rundir.remove_task_specs(submission)
        raise
    entry = {
        "tag": tag,
        "jobId": job_id,
        "runId": run_id,
        "batchIds": [b.id for b in batches],
        "batchIndex": {b.id: b.index for b in batches},
        "batchParameters": {b.id: b.parameters for b in batches},
        "submittedAt": now_iso(),
        "sbatch": argv,
    }
    if packed:
        entry["packed"] = packed
    rundir.add_submission(outdir, entry)
    job = make_job(outdir, entry)
    write_run_summary(outdir, experiment=experiment, states={b.id: SCHEDULED for b in batches})
    return job




def _write_spec(outdir: Path, submission: Path, task_id: int, batch: Batch, shared: dict[str, Any]) -> None:
    # A stale record of an earlier attempt must not pass for this attempt's result.
    RunDir(outdir).remove_record(batch.id)
    rundir.write_task_spec(submission, task_id, {**shared, "batch": _batch_data(batch)})


def add_batch(job: PackedJob, batch: Batch) -> None:
    """Add a batch to a packed submission whose queue is open (``open_for``): its spec, its
    entry in submissions.json (what ``faice status`` and ``results`` read), then the queue."""
    shared = rundir.read_stored(rundir.task_spec_path(job.submission_dir, rundir.OPEN_SPEC))
    task = len(job.batch_ids)
    _write_spec(job.outdir, job.submission_dir, task, batch, shared)
    job.batch_ids.append(batch.id)
    job.batch_index[batch.id] = batch.index
    job.batch_parameters[batch.id] = batch.parameters
    rundir.update_submission(job.outdir, job.tag, {"batchIds": job.batch_ids, "batchIndex": job.batch_index,
                                                   "batchParameters": job.batch_parameters})
    job.queue.add(task)


def close_queue(job: PackedJob) -> None:
    """No more batches for this submission: its workers end once the queue is empty."""
    job.queue.close()
    rundir.task_spec_path(job.submission_dir, rundir.OPEN_SPEC).unlink(missing_ok=True)


# ----------------------------------------------------------------------------- run directory


def make_job(outdir: Path, entry: dict[str, Any]) -> Job:
    """The job of one submissions.json entry: a task per batch, or packed workers."""
    return PackedJob(outdir, entry) if entry.get("packed") else SlurmJob(outdir, entry)


def open_run(outdir: Path) -> list[Job]:
    """The job arrays of a Slurm run directory, oldest first."""
    outdir = Path(outdir).resolve()
    if not rundir.is_slurm_run(outdir):
        raise UsageError(f"{outdir}: not a Slurm run directory (no slurm/{rundir.SUBMISSIONS})")
    return [make_job(outdir, entry) for entry in rundir.read_submissions(outdir)]


def refresh_run(outdir: Path) -> dict[str, Any]:
    """Ask Slurm for the state of every batch, rewrite run.json and return it."""
    jobs = open_run(outdir)
    return write_run_summary(Path(outdir).resolve(), states=current_states(jobs))


def cancel_run(outdir: Path, batch_id: str | None = None) -> list[str]:
    """Cancel every unfinished batch of a Slurm run (or one batch); returns the batch ids."""
    jobs = open_run(outdir)
    states = current_states(jobs)
    if batch_id is not None and batch_id not in states:
        raise UsageError(f"{outdir}: no batch {batch_id!r} in this run")
    cancelled = [b for b, s in states.items() if s not in FINAL and (batch_id is None or b == batch_id)]
    owner = {b: job for job in jobs for b in job.batch_ids}
    for job in jobs:
        mine = [b for b in cancelled if owner[b] is job]
        if mine:
            job.cancel(None if len(mine) == len(job.batch_ids) else mine)
    return cancelled


def wait_run(jobs: list[Job], on_update: Callable[[dict[str, BatchState]], None] | None = None
             ) -> dict[str, BatchState]:
    """Follow every array of a run until each batch is final (``faice status --wait``, cancel)."""
    return watch(jobs, on_update)


def write_run_summary(outdir: Path, *, states: dict[str, BatchState],
                      experiment: Experiment | None = None, cancelled_early: bool = False) -> dict[str, Any]:
    """run.json for a Slurm run: the batch records, the live Slurm state of batches that have
    no final record yet, and the Slurm job ids (``cancelled_early``: see ``RunDir.rebuild``)."""
    outdir = Path(outdir)
    submissions = rundir.read_submissions(outdir)
    live = dict(states)
    header: dict[str, Any] = {"engine": "slurm", "outdir": str(outdir),
                              "slurm": {"jobIds": [s["jobId"] for s in submissions]}}
    if submissions:
        header["runId"] = submissions[0]["runId"]
    if experiment is not None:
        header["source"] = experiment.source
        for batch in experiment.batches:
            live.setdefault(batch.id, SCHEDULED)
    described = {b: (s.get("batchIndex", {}).get(b), s.get("batchParameters", {}).get(b))
                 for s in submissions for b in s.get("batchIds", [])}
    return RunDir(outdir).rebuild(live=live, header=header, described=described, cancelled_early=cancelled_early)


def cancel_jobs_below(directory: Path, pattern: str = "attempt-*") -> list[str]:
    """Cancel every job array of the run directories ``directory/<pattern>`` (an agency
    batch's attempts, or the packs, whose server stopped); returns their job ids."""
    cancelled = []
    for attempt in sorted(Path(directory).glob(pattern)):
        if rundir.is_slurm_run(attempt):
            for job in open_run(attempt):
                job.cancel()
                job.remove_specs()
                cancelled.append(job.job_id)
    return cancelled


def check_submission(settings: SlurmSettings, workdir: Path) -> str | None:
    """Slurm's objection to a job array with these settings, or None (nothing is queued)."""
    slurm_cli.require_tools()
    argv = sbatch_options(settings, {}, job_name="faice-check", array="0", output="/dev/null", workdir=str(workdir))
    return slurm_cli.test_submission(argv)
