"""``sweep.search`` on Slurm: this process drives the search, packed workers (or array tasks) run its trials.

The search loop is the local engine's (:func:`faice.pipeline.search.drive`); here it runs on
the submitting host while ONE packed array of workers (``execution.settings.workers``) waits
on an open claim queue: each proposed trial is added to the queue as a batch (its spec, its
entry in submissions.json, ``ready/<n>.0``), a worker claims and runs it, and once its record
is final this process reads the trial's objective (and its series) back from the record and
tells the sampler. ``maxConcurrent`` (and the workers' slots) bound the trials in flight;
early stopping runs on the nodes as for any packed batch (the workers share the live series).

The driver is the sampler, so ``faice exec`` follows a search to its end (as with ``--wait``);
the queue's ``OPEN`` heartbeat keeps idle workers waiting for the next trial and lets them end
when the driver is gone. Ctrl-C or SIGTERM cancels the workers; ``--resume`` replays the told
trials into the sampler and goes on (``N trials reused, M new``).

Without ``workers`` the same loop submits each trial as a job array of one task (one
``sbatch`` per trial; one ``squeue`` per poll round for all trials in flight): fine for a few
dozen trials; packing is the way for many.
"""

from __future__ import annotations

import math
import shlex
import signal
import time
from pathlib import Path
from typing import Any

from faice.engines.slurm import client as slurm_cli
from faice.engines.slurm import rundir
from faice.engines.slurm.job import (
    FINAL,
    POLL_INTERVAL_S,
    SUCCEEDED,
    Job,
    add_batch,
    close_queue,
    submit_batches,
    watch,
    write_run_summary,
)
from faice.engines.slurm.packed import PackedJob
from faice.engines.slurm.progress import Follower
from faice.engines.slurm.settings import SlurmSettings
from faice.engines.slurm.watcher import current_states
from faice.errors import UsageError
from faice.files import dumps_json
from faice.pipeline.options import ExecRequest, RunOptions
from faice.pipeline.plan import metrics_spec
from faice.pipeline.records import BatchState
from faice.pipeline.resume import save_red_file
from faice.pipeline.rundir import RunDir
from faice.pipeline.search import Ended, Search, drive, objective_series, read_log
from faice.pipeline.signals import EXIT_SIGNAL, interrupts_to
from faice.pipeline.trials import counted
from faice.red.experiment import Batch, Experiment
from faice.secrets import REDACTOR

DEFAULT_CONCURRENT = 4  # trials in flight on per-task Slurm without maxConcurrent, --parallel or batchConcurrencyLimit


class SlurmTrials:
    """The Slurm side of the search loop (:func:`faice.pipeline.search.drive`): what packed and
    per-task submissions share (polling, the follower, signals, failures)."""

    def __init__(self, outdir: Path, follower: Follower, received: list[int], options: RunOptions, objective: str):
        self.outdir = outdir
        self.follower = follower
        self.received = received
        self.rundir = RunDir(outdir)
        self.in_flight: set[str] = set()
        self.cancelled = False
        self.failures = 0
        self.fail_fast = options.fail_fast
        self.max_failures = options.max_failures
        self.objective = objective
        self.states: dict[str, BatchState] = {}
        self._last_poll = 0.0

    def start(self, batch: Batch) -> None:
        self.follower.batch_index[batch.id] = batch.index
        self._submit(batch)
        self.in_flight.add(batch.id)

    def ended(self) -> list[Ended]:
        wait = POLL_INTERVAL_S - (time.monotonic() - self._last_poll)
        if wait > 0:
            time.sleep(wait)
        self._last_poll = time.monotonic()
        self.cancel_on_signal()
        states = self._poll()
        self.states.update(states)
        self.follower.update(states)
        found = []
        for batch_id, state in states.items():
            if state not in FINAL or batch_id not in self.in_flight:
                continue
            record = self.rundir.read_record(batch_id)
            if record is None:
                continue  # final but not readable yet: the next poll
            self.in_flight.discard(batch_id)
            if record.state == BatchState.FAILED:
                self.failures += 1
            found.append(Ended(batch_id, record, objective_series(self.rundir, batch_id, self.objective)))
        return found

    def stop_starting(self) -> bool:
        self.cancel_on_signal()
        if self.cancelled or (self.fail_fast and self.failures):
            return True
        if self.max_failures is not None and self.failures >= self.max_failures:
            return True
        return self._gone()

    def cancel_on_signal(self) -> None:
        if self.received and not self.cancelled:
            self.cancelled = True
            self._cancel()

    # what a kind of submission does
    def _submit(self, batch: Batch) -> None:
        raise NotImplementedError

    def _poll(self) -> dict[str, BatchState]:
        raise NotImplementedError

    def _cancel(self) -> None:
        raise NotImplementedError

    def _gone(self) -> bool:
        return False


class PackedTrials(SlurmTrials):
    """Packed: each trial goes into the open queue of ``job``'s workers."""

    def __init__(self, job: PackedJob, *args: Any):
        super().__init__(job.outdir, *args)
        self.job = job

    def _submit(self, batch: Batch) -> None:
        add_batch(self.job, batch)

    def _poll(self) -> dict[str, BatchState]:
        if not self.cancelled:
            self.job.queue.hold_open()  # the driver's heartbeat: idle workers wait for more
        return self.job.poll(set(self.in_flight))

    def _cancel(self) -> None:
        self.follower.note(f"interrupted: cancelling Slurm job array {self.job.job_id}")
        self.job.cancel()

    def _gone(self) -> bool:
        # faice cancel --outdir, or no worker left: --resume goes on
        return self.job.queue.cancel_requested() or not self.job.workers_alive()


class TaskTrials(SlurmTrials):
    """Per task (no ``workers``): each trial is an array of one task of its own."""

    def __init__(self, experiment: Experiment, run_id: str, outdir: Path, follower: Follower, received: list[int],
                 options: RunOptions, objective: str):
        super().__init__(outdir, follower, received, options, objective)
        self.experiment = experiment
        self.run_id = run_id
        self.options = options
        self.jobs: dict[str, Job] = {}

    def _submit(self, batch: Batch) -> None:
        self.jobs[batch.id] = submit_batches(self.experiment, self.options, self.outdir, [batch], run_id=self.run_id)

    def _poll(self) -> dict[str, BatchState]:
        # One squeue for all trials in flight (the watcher's round), not one per trial.
        return current_states([self.jobs[batch_id] for batch_id in self.in_flight])

    def _cancel(self) -> None:
        self.follower.note(f"interrupted: cancelling the Slurm jobs of {len(self.in_flight)} trial(s)")
        for batch_id in list(self.in_flight):
            self.jobs[batch_id].cancel()


def run(experiment: Experiment, request: ExecRequest, settings: SlurmSettings, run: RunDir, run_id: str) -> int:
    """Drive the search of ``experiment`` on Slurm until its budget is spent."""
    options = request.options
    outdir = run.root
    metrics = metrics_spec(experiment)
    assert metrics is not None  # checked by the RED validation
    if options.resume:
        _refuse_live_jobs(outdir)
    search = Search(experiment, metrics, outdir, resume=options.resume)
    try:
        if options.resume:
            _say(f"faice: search: {search.reused} trials reused, {search.remaining} new (trials: {search.spec.trials})")
        save_red_file(run, experiment.data, REDACTOR)
        if search.remaining == 0:
            summary = write_run_summary(outdir, states={})
            _say(f"faice: nothing to submit: the search's {search.spec.trials} trials are told in {outdir}")
            return 0 if summary.get("state") == SUCCEEDED else 1
        received: list[int] = []
        # Trial numbers go on after cancelled trials (proposed again under new numbers).
        follower = Follower(outdir, {}, live=None if request.progress else False,
                            total=search.next_number + search.remaining)
        shared = (follower, received, options, metrics.objective.name)
        bound = search.spec.max_concurrent or math.inf
        runner: SlurmTrials
        if settings.packed:
            job = submit_batches(experiment, options, outdir, [], run_id=run_id, max_running=options.parallel,
                                 open_for=search.remaining)
            assert isinstance(job, PackedJob)
            pack = rundir.read_stored(job.submission_dir / rundir.PACK_FILE)
            concurrent = int(min(job.workers * int(pack.get("batchesPerWorker", 1)), bound, options.parallel or math.inf))
            _say(f"faice: submitted Slurm job array {job.job_id} ({job.workers} workers for a search of "
                 f"{search.remaining} trials, {concurrent} at a time); run directory {outdir}")
            runner = PackedTrials(job, *shared)
        else:
            limits = [n for n in (search.spec.max_concurrent, options.parallel, settings.max_running) if n]
            concurrent = min(limits) if limits else DEFAULT_CONCURRENT
            _say(f"faice: a search of {search.remaining} trials, {concurrent} at a time, one Slurm job array "
                 f"per trial (workers: K packs them into K allocations); run directory {outdir}")
            runner = TaskTrials(experiment, run_id, outdir, *shared)
        if not request.wait:
            _say("faice: a search is driven from here (this process is its sampler): following it as with --wait")
        with follower, interrupts_to(lambda signum, _frame: received.append(signum)):
            if isinstance(runner, PackedTrials):
                try:
                    drive(search, runner, concurrent=concurrent)
                finally:
                    close_queue(runner.job)
                states = watch([runner.job], follower.update, before_poll=runner.cancel_on_signal)
            else:
                drive(search, runner, concurrent=concurrent)
                for job in runner.jobs.values():
                    job.remove_specs()
                states = runner.states
        summary = write_run_summary(outdir, states=states, cancelled_early=bool(received) and search.remaining > 0)
        if request.json:
            print(REDACTOR.redact(dumps_json(summary, indent=2)))
        follower.report(summary)
        told = counted(read_log(outdir)[1])
        _say(f"faice: search: {told} of {search.spec.trials} trials told; see: faice results {shlex.quote(str(outdir))}")
        if received:
            return EXIT_SIGNAL.get(received[0], EXIT_SIGNAL[signal.SIGINT])
        return 0 if summary["state"] == SUCCEEDED else 1
    finally:
        search.close()


def _refuse_live_jobs(outdir: Path) -> None:
    """``--resume`` of a search whose earlier jobs still run (its driver was killed: workers end
    ``leaseSeconds`` after its last heartbeat, once their trials are done) would run those
    trials twice, into the same directories: refuse (one squeue for every job of the run)."""
    entries = {str(entry["jobId"]): entry for entry in rundir.read_submissions(outdir) if entry.get("jobId")}
    live = [job for job, tasks in slurm_cli.queued_tasks_of(list(entries)).items()
            if any(not t.is_final for t in tasks.values()) and not _ending(outdir, entries[job])]
    if live:
        raise UsageError(
            f"--outdir {outdir}: Slurm job{'s' if len(live) > 1 else ''} {', '.join(sorted(live))} of this search "
            "still run (its earlier faice exec stopped); --resume goes on once they ended",
            hint=f"wait for them, or end them now: faice cancel all --outdir {shlex.quote(str(outdir))}")


def _ending(outdir: Path, entry: dict[str, Any]) -> bool:
    """Workers of a queue their driver closed with nothing left in it (a search that ended a
    moment ago): they claim nothing more and only end."""
    return bool(entry.get("packed")) and PackedJob(outdir, entry).queue.drained()


def _say(message: str) -> None:
    import sys

    print(REDACTOR.redact(message), file=sys.stderr, flush=True)
