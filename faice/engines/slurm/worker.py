"""A faice worker of a packed Slurm run: one allocation that pulls many batches.

    python -m faice.engines.slurm.worker SUBMISSION_DIR

The worker claims batches from ``SUBMISSION_DIR/queue`` (:mod:`faice.engines.slurm.claims`),
runs up to ``batchesPerWorker`` of them at once with :meth:`Host.run_alone` (the pipeline of
``faice exec``; one Host per worker, so the GPUs Slurm gave the allocation are handed out
exclusively), keeps their leases alive, and publishes each batch's directory into the run
directory only after its commit succeeded. It stops when the queue is empty and no other
worker holds a claim that could still expire back to it, nor does the driver of a search
add more (its queue is open).

SIGTERM (``scancel``, the allocation's time limit) stops the running containers and gives
their batches back to the queue for another worker, unless the run is being cancelled: then
the batches are recorded cancelled.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from faice.engines.slurm import rundir
from faice.engines.slurm.claims import Claim, ClaimQueue
from faice.engines.slurm.task import docker_gpu_ids, say, shared_stopper
from faice.pipeline.host import Host, failed_before_start
from faice.pipeline.options import RunOptions
from faice.pipeline.plan import plan_batches
from faice.pipeline.records import BatchRecord, BatchState
from faice.pipeline.rundir import RunDir
from faice.pipeline.stopping import SharedStopper
from faice.red.experiment import Batch, Experiment
from faice.runtime.gpus import host_allocator
from faice.runtime.select import DEFAULT_RUNTIME
from faice.secrets import Redactor

IDLE_SLEEP_S = 0.5
CANCEL_CHECK_S = 1.0


@dataclass
class Held:
    """A claim this worker holds and the event that stops its batch."""

    claim: Claim
    cancel: threading.Event = field(default_factory=threading.Event)
    lost: bool = False


class Worker:
    def __init__(self, submission: Path, environ: dict[str, str]):
        self.submission = submission
        self.outdir = submission.parent.parent
        self.queue = ClaimQueue(submission / "queue")
        pack = rundir.read_stored(submission / rundir.PACK_FILE)
        self.slots = int(pack.get("batchesPerWorker", 1))
        self.lease_s = float(pack.get("leaseSeconds", 60))
        self.heartbeat_s = max(0.2, self.lease_s / 5)
        stored = rundir.read_stored(submission / "options.json")
        self.options = RunOptions.from_dict(stored).replace(parallel=1)
        self.run_id = str(stored.get("run_id"))
        job, task = environ.get("SLURM_ARRAY_JOB_ID"), environ.get("SLURM_ARRAY_TASK_ID")
        self.name = f"{job}_{task}" if job else f"{os.uname().nodename}:{os.getpid()}"
        self.start = int(task) * 7919 if task and task.isdigit() else os.getpid()
        self.engine_base = {"name": "slurm", "node": os.uname().nodename, "jobId": job,
                            "taskId": int(task) if task and task.isdigit() else None, "worker": self.name}
        self.gpu_ids = docker_gpu_ids(environ)
        # One Host per worker: its batches get the allocation's GPUs exclusively. Like a task,
        # it reads Slurm's allocation itself (devices matched by UUID, busy ones skipped).
        self.host = Host(host_allocator(None, busy=self.options.gpu_busy))
        # The pack's container runtime: where a dead worker's batches left their containers.
        self.runtimes = {self.options.runtime_for(str(pack.get("runtime") or DEFAULT_RUNTIME))}
        self.stopping = threading.Event()  # SIGTERM
        self.held: dict[int, Held] = {}
        self.lock = threading.Lock()
        self.ran: list[str] = []
        self.stopper: SharedStopper | None = None

    def stop(self) -> None:
        """SIGTERM: stop the running batches now (no lock: this runs in a signal handler,
        possibly while the main thread holds it; copying the dict is atomic)."""
        self.stopping.set()
        for entry in list(self.held.values()):
            entry.cancel.set()

    # ------------------------------------------------------------------ main loop

    def run(self) -> int:
        say(f"faice worker {self.name}: {self.slots} slot(s), GPUs: {self.gpu_ids or 'none'}, lease {self.lease_s:g} s")
        slots = [threading.Thread(target=self._slot, name=f"faice-slot-{i}", daemon=True) for i in range(self.slots)]
        for thread in slots:
            thread.start()
        last_beat = last_check = time.monotonic()
        while any(t.is_alive() for t in slots):
            alive = next((t for t in slots if t.is_alive()), None)
            if alive is not None:
                alive.join(0.2)
            now = time.monotonic()
            if self.stopping.is_set():
                with self.lock:
                    for entry in self.held.values():
                        entry.cancel.set()
            if now - last_beat >= self.heartbeat_s:
                last_beat = now
                self._beat()
            elif now - last_check >= CANCEL_CHECK_S:
                last_check = now
                self._check_cancel()
        if not self.stopping.is_set() and self.queue.left_open():
            # Its driver died (the queue open, its heartbeat stale): no batch can be added any
            # more, so the open queue's shared spec (filled secrets) goes now, not at a --resume
            # or a faice cancel that may never come.
            rundir.task_spec_path(self.submission, rundir.OPEN_SPEC).unlink(missing_ok=True)
        say(f"faice worker {self.name}: done, ran {len(self.ran)} batch(es)")
        return 0

    def _beat(self) -> None:
        """Renew every lease; stop batches whose lease was lost or whose cancel was asked for."""
        cancel_all = self.queue.cancel_requested()
        with self.lock:
            held = list(self.held.values())
        for entry in held:
            if not self.queue.heartbeat(entry.claim):
                entry.lost = True
                entry.cancel.set()
            elif cancel_all or self.stopping.is_set() or self.queue.cancel_requested_for(entry.claim.task):
                entry.cancel.set()

    def _check_cancel(self) -> None:
        """Stop the batches that ``faice cancel`` asked for (between two heartbeats)."""
        cancel_all = self.queue.cancel_requested()
        with self.lock:
            held = list(self.held.values())
        for entry in held:
            if cancel_all or self.queue.cancel_requested_for(entry.claim.task):
                entry.cancel.set()

    def _slot(self) -> None:
        empty_checks = 0
        while not self.stopping.is_set() and not self.queue.cancel_requested():
            claim = self.queue.claim(self.start)
            if claim is None:
                # Nothing waits, nothing can come back and the driver adds nothing more (twice:
                # a claim moving between listings of a busy directory must not end the last worker).
                busy = self.queue.anything_open() or self.queue.more_may_come(self.lease_s)
                empty_checks = 0 if busy else empty_checks + 1
                if empty_checks >= 2:
                    return
                if self.queue.reap(self.lease_s):
                    self._remove_orphans()
                time.sleep(IDLE_SLEEP_S)
                continue
            empty_checks = 0
            entry = Held(claim)
            with self.lock:
                self.held[claim.task] = entry
            try:
                self._run_claim(entry)
            finally:
                with self.lock:
                    self.held.pop(claim.task, None)

    def _remove_orphans(self) -> None:
        """A claim expired: its worker died. If it died on this node (SIGKILL), its container
        may still be running the batch that is about to run again: remove, through the pack's
        runtime, what faice processes that are gone left (containers, process groups, cgroups;
        a lost node's went with the node)."""
        removed: list[str] = []
        for name in sorted(self.runtimes):
            try:
                removed += self.host.remove_orphans(name)
            except Exception as exc:  # cleaning up must not stop the worker
                say(f"faice worker {self.name}: could not look for orphans in {name}: {exc}")
        if removed:
            say(f"faice worker {self.name}: removed what a dead worker left: {', '.join(removed)}")

    # ------------------------------------------------------------------ one batch

    def _run_claim(self, entry: Held) -> None:
        claim = entry.claim
        stage = self.submission / "work" / claim.name
        spec_path = rundir.task_spec_path(self.submission, claim.task)
        try:
            spec = rundir.read_stored(spec_path)
            redactor = Redactor(spec.get("protected") or [])
            experiment = Experiment.of_batch(spec["source"], spec["data"], Batch(**spec["batch"]))
            (plan,) = plan_batches(experiment)
        except Exception as exc:  # gone (cancelled) or unreadable: no worker could run it
            reason = "no spec (cancelled)" if isinstance(exc, FileNotFoundError) else f"{type(exc).__name__}"
            say(f"faice worker {self.name}: task {claim.task}: {reason}: not run")
            # Final without a record: the follower records it (re-queuing would only hand
            # the same spec to the next worker).
            self.queue.commit(claim)
            return
        # taskId: the worker's array task; queueIndex and claim: the batch's place and lease.
        engine = {**self.engine_base, "queueIndex": claim.task, "claim": claim.generation}
        self.runtimes.add(self.options.runtime_for(plan.engine))
        say(f"faice worker {self.name}: batch {plan.id} (task {claim.task}, claim {claim.generation})")
        shutil.rmtree(stage, ignore_errors=True)
        stage.mkdir(parents=True)
        record: BatchRecord
        try:
            stopper = self._stopper(plan)
            record = self.host.run_alone(plan, run_id=self.run_id, outdir=stage, redactor=redactor,
                                         options=self.options, cancel=entry.cancel, engine=engine,
                                         stop_rule=stopper.check if stopper is not None else None)
            if stopper is not None:
                stopper.done(plan.id)
        except Exception as exc:  # a bug: the batch still gets a record, the log the reason
            say(f"faice worker {self.name}: internal error: {type(exc).__name__}: {exc}", redactor)
            record = failed_before_start(plan, self.run_id, stage, f"internal error: {type(exc).__name__}: {exc}",
                                         redactor=redactor, engine=engine)
        cancelled_run = self.queue.cancel_requested() or self.queue.cancel_requested_for(claim.task)
        if entry.lost:
            say(f"faice worker {self.name}: lost the lease of batch {plan.id}: its result is discarded")
        elif self.stopping.is_set() and not cancelled_run and record.state != BatchState.SUCCEEDED:
            # SIGTERM reaches the whole job step: a connector program or anything else the
            # batch was running may have died of it before the cancel event was set, so a
            # failure while stopping is the stop's doing, not the batch's.
            released = self.queue.release(claim)
            say(f"faice worker {self.name}: stopping: batch {plan.id} "
                + ("goes back to the queue" if released else "was already taken back"))
        elif self.queue.commit(claim):
            try:
                self._publish(stage, plan.id)
            except OSError as exc:  # the follower records the batch as ended without a record
                say(f"faice worker {self.name}: could not publish batch {plan.id}: {exc}")
            spec_path.unlink(missing_ok=True)
            self.ran.append(plan.id)
            say(f"faice worker {self.name}: batch {plan.id} {record.state}"
                + (f": {record.message}" if record.message else ""), redactor)
        else:
            say(f"faice worker {self.name}: lease of batch {plan.id} was taken: its result is discarded")
        shutil.rmtree(stage, ignore_errors=True)

    def _stopper(self, plan: Any) -> SharedStopper | None:
        """The early-stopping rule of this worker's batches (metrics.earlyStopping): it sees the
        other workers' batches through the run directory (live series, finished metrics), or
        through the directory the run's options name (an agency's: every submission of the
        experiment)."""
        with self.lock:
            if self.stopper is None and plan.metrics is not None:
                self.stopper = shared_stopper(plan.metrics, self.options, self.submission, self.outdir)
            return self.stopper

    def _publish(self, stage: Path, batch_id: str) -> None:
        """Move the batch's directory into the run directory (one rename on the same file system)."""
        source, target = RunDir(stage).batch(batch_id).path, RunDir(self.outdir).batch(batch_id).path
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():  # a stale directory of an earlier attempt (--resume)
            old = stage / "replaced"
            os.rename(target, old)
        os.rename(source, target)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {__name__}", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("submission", type=Path)
    args = parser.parse_args(argv)
    submission = args.submission.resolve()
    environ = dict(os.environ)
    # The Docker daemon counts host GPUs; the renumbered ids must not restrict them again.
    os.environ.pop("CUDA_VISIBLE_DEVICES", None)
    worker = Worker(submission, environ)

    def stop(signum: int, _frame: object) -> None:
        worker.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    return worker.run()


if __name__ == "__main__":
    sys.exit(main())
