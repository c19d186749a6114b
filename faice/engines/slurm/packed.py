"""A packed Slurm submission: ONE array of ``workers`` allocations that pull the batches.

The batch states come from the claim queue on the shared file system (three directory
listings); Slurm is asked only whether workers are still alive: one ``squeue`` call for the
whole run, at most once every ``pollInterval`` seconds. A batch that is still waiting or
claimed once no worker is left gets a failure record (or a cancelled one after ``faice
cancel``), after taking the batch out of the queue so that no worker can publish it later;
so does a committed batch whose record never appeared. While a worker lives, a committed
batch is only waiting for its worker to publish the record.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from faice.engines.slurm import client as slurm_cli
from faice.engines.slurm import rundir
from faice.engines.slurm.claims import CLAIMED, DONE, READY, ClaimQueue
from faice.engines.slurm.watcher import SlurmView
from faice.pipeline.records import FINAL_STATES, BatchState, FailureClass

WORKER_MODULE = "faice.engines.slurm.worker"
RECORD_GRACE_S = rundir.RECORD_GRACE_S


class PackedJob(rundir.Submission):
    """One packed submission: the array of worker tasks and the queue of its batches.

    The same interface as :class:`faice.engines.slurm.job.SlurmJob` (poll, cancel,
    remove_specs), so ``faice exec --wait``, ``status``, ``results`` and ``cancel`` work alike."""

    def __init__(self, outdir: Path, entry: dict[str, Any]):
        super().__init__(outdir, entry)
        pack = entry.get("packed") or {}
        self.workers = int(pack.get("workers", 1))
        self.poll_interval = float(pack.get("pollInterval", 10.0))
        self.queue = ClaimQueue(self.submission_dir / "queue")
        self._states: dict[str, BatchState] = {}
        self._alive: bool | None = None
        self._asked_at = float("-inf")
        self._gone_since: dict[str, float] = {}
        self.squeue_calls = 0

    # ------------------------------------------------------------------ Slurm, rate-limited

    def wants_queue(self) -> bool:
        """Whether the workers are due to be asked for again (once per poll interval, and
        never again once none is left)."""
        return self._alive is None or (self._alive and time.monotonic() - self._asked_at >= self.poll_interval)

    def workers_alive(self, view: SlurmView | None = None) -> bool:
        """Whether any worker task is pending or running: squeue is asked (in the watcher's
        round, ``view``) at most once per poll interval."""
        if self.wants_queue():
            now = time.monotonic()
            tasks = view.queued(self.job_id) if view is not None else slurm_cli.queued_tasks(self.job_id)
            self.squeue_calls += 1
            self._asked_at = now
            self._alive = any(not t.is_final for t in tasks.values())
        return bool(self._alive)

    # ------------------------------------------------------------------ states

    def poll(self, only: set[str] | None = None, view: SlurmView | None = None) -> dict[str, BatchState]:
        scan = self.queue.scan()
        alive: bool | None = None
        states: dict[str, BatchState] = {}
        for task, batch_id in enumerate(self.batch_ids):
            if only is not None and batch_id not in only:
                continue
            if self._states.get(batch_id) in FINAL_STATES:
                states[batch_id] = self._states[batch_id]
                continue
            kind = scan.get(task, (None, None))[0]
            if kind == DONE:
                record = self.rundir.read_record(batch_id)
                if record is not None and record.is_final:
                    states[batch_id] = record.state
                    continue
            if kind in (READY, CLAIMED, DONE):
                # DONE without a record: committed, its worker still publishes it (a slow
                # shared file system, a suspended job); lost only once no worker is left.
                if alive is None:
                    alive = self.workers_alive(view)
                if alive:
                    states[batch_id] = BatchState.PENDING if kind == READY else BatchState.RUNNING
                    self._gone_since.pop(batch_id, None)
                    continue
            first = self._gone_since.setdefault(batch_id, time.monotonic())
            if time.monotonic() - first < RECORD_GRACE_S:
                states[batch_id] = BatchState.RUNNING if kind != READY else BatchState.PENDING
                continue
            states[batch_id] = self._record_lost(task, batch_id, kind)
        self._states.update(states)
        return states

    def _record_lost(self, task: int, batch_id: str, kind: str | None) -> BatchState:
        """The record of a batch that no worker finished: taken out of the queue first
        (``kind`` DONE: it is out already)."""
        if kind != DONE and self.queue.finish(task, (READY, CLAIMED)) is None:
            return BatchState.RUNNING  # it moved meanwhile: look again at the next poll
        rundir.task_spec_path(self.submission_dir, task).unlink(missing_ok=True)
        if self.queue.cancel_requested() or self.queue.cancel_requested_for(task):
            failure, message = FailureClass.CANCELLED, "cancelled before the batch finished"
        elif kind == DONE:
            failure, message = FailureClass.ENGINE, ("the faice worker ended the batch without a record (it stopped while saving"
                                       " the results, or could not read the batch; see slurm/logs/)")
        else:
            failure, message = FailureClass.ENGINE, (
                f"no faice worker of Slurm job {self.job_id} is left to run the batch"
                " (workers ended: time limit, cancelled or failed; see slurm/logs/)")
        logs = [rundir.log_path(self.outdir, self.job_id, w) for w in range(self.workers)]
        text = "\n".join(f"{p.name}:\n{t}" for p in logs if (t := rundir.tail(p, 1500)))
        return self.record_lost(batch_id, failure, message, engine={"queueIndex": task, "packed": True},
                                logs=text, logs_title="worker output")

    # ------------------------------------------------------------------ cancel

    def cancel(self, batch_ids: Iterable[str] | None = None) -> None:
        """Cancel the run (scancel the workers, waiting batches recorded cancelled), or some
        batches: waiting ones are cancelled here, claimed ones by their worker."""
        open_ids = [b for b in self.batch_ids if self._states.get(b) not in FINAL_STATES]
        wanted = set(self.batch_ids if batch_ids is None else batch_ids)
        everything = wanted >= set(open_ids)
        if everything:
            self.queue.request_cancel_all()
        for task, batch_id in enumerate(self.batch_ids):
            if batch_id not in wanted:
                continue
            if not everything:
                self.queue.request_cancel(task)
            if self.queue.finish(task) is not None:  # still waiting: no worker will see it
                self._states[batch_id] = self._record_lost(task, batch_id, DONE)
        if everything:
            slurm_cli.scancel(self.job_id)
