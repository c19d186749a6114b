"""Where Slurm is polled: the one loop that follows every Slurm job of a process.

Every caller that waits for Slurm goes through :func:`_every` here:

* :func:`watch`: ``faice exec --wait``, ``faice status --wait`` and ``faice cancel`` follow
  the arrays of one run directory until each batch is final;
* :class:`Watcher`: the agency server's Slurm runners (:mod:`faice.agency.slurm_runner`,
  :mod:`faice.agency.slurm_pack`) hand it every batch they submitted; one background thread
  polls them all, cancels those whose cancel event is set, and wakes each runner thread when
  its batch is final.

Each round asks Slurm through one :class:`SlurmView`: ONE ``squeue`` call for all the jobs
that need it that round (however many jobs and runners there are), and ``scontrol`` only for
an array whose tasks squeue no longer lists (their exit status). The arrays themselves
(:class:`faice.engines.slurm.job.SlurmJob`, :class:`faice.engines.slurm.packed.PackedJob`)
turn what Slurm says into batch states and write the record of a batch lost on the way
(:meth:`faice.engines.slurm.rundir.Submission.record_lost`, the one builder).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from faice.engines.slurm import client as slurm_cli
from faice.errors import FaiceError
from faice.pipeline.records import FINAL_STATES, BatchState

log = logging.getLogger("faice.agency")

# `faice exec --wait`'s poll interval; the agency server's runners poll once a second.
POLL_INTERVAL_S = 0.5
SERVER_POLL_INTERVAL_S = 1.0
# Slurm commands may fail for a while (slurmctld restart); give up on a batch after this long.
SLURM_OUTAGE_S = 120.0
# After scancel, how long to wait for the task to end (it stops its container and writes
# its record) before the batch is reported cancelled anyway.
CANCEL_WAIT_S = 60.0

T = TypeVar("T")


class SlurmView:
    """What Slurm says in one poll round: one ``squeue`` for every job of ``job_ids`` (made
    at the first question, not at all when none is asked), ``scontrol`` per job on demand."""

    def __init__(self, job_ids: Iterable[str]):
        self.job_ids = sorted(set(job_ids))
        self._queued: dict[str, dict[int, slurm_cli.TaskState]] = {}
        self._error: FaiceError | None = None
        self._asked = False

    def queued(self, job_id: str) -> dict[int, slurm_cli.TaskState]:
        """The tasks of ``job_id`` squeue lists (pending or running)."""
        if not self._asked:
            self._asked = True
            try:
                self._queued = slurm_cli.queued_tasks_of(sorted({*self.job_ids, job_id}))
            except FaiceError as exc:
                self._error = exc  # every job of this round fails alike; asked again next round
        if self._error is not None:
            raise self._error
        if job_id not in self._queued:  # a job that was not announced: asked on its own
            self._queued.update(slurm_cli.queued_tasks_of([job_id]))
        return self._queued[job_id]

    def task_states(self, job_id: str, tasks: Iterable[int]) -> dict[int, slurm_cli.TaskState]:
        """The state of ``tasks`` of ``job_id``: the queue for live ones; ``scontrol`` (exit
        codes, reasons) only when one of them has left the queue."""
        queued = self.queued(job_id)
        if all(t in queued for t in tasks):
            return dict(queued)
        states = slurm_cli.job_records(job_id)
        states.update({k: v for k, v in queued.items() if not states.get(k, v).is_final})
        return states


class Followed(Protocol):
    """A Slurm submission a watcher follows (a ``SlurmJob`` or a ``PackedJob``)."""

    job_id: str
    batch_ids: list[str]

    def wants_queue(self) -> bool: ...

    def poll(self, only: set[str] | None = None, view: SlurmView | None = None) -> dict[str, BatchState]: ...

    def remove_specs(self) -> None: ...


def view_of(jobs: Iterable[Followed]) -> SlurmView:
    """The view of one poll round: squeue is asked for the jobs that want it this round."""
    return SlurmView(job.job_id for job in jobs if job.wants_queue())


def current_states(jobs: Sequence[Followed], view: SlurmView | None = None) -> dict[str, BatchState]:
    """Batch states over all arrays of a run, in one round; each batch is asked of the latest
    array that ran it (``--resume`` re-submits failed batches in a new array)."""
    owner = {batch_id: job for job in jobs for batch_id in job.batch_ids}
    view = view or view_of(jobs)
    states: dict[str, BatchState] = {}
    for job in jobs:
        mine = {b for b, j in owner.items() if j is job}
        if mine:
            states.update(job.poll(mine, view))
    return states


def _every(interval: float, round_: Callable[[], T | None], wake: threading.Event | None = None) -> T:
    """THE poll loop: run ``round_`` every ``interval`` seconds until it returns a result
    (``wake`` starts the next round early)."""
    while True:
        result = round_()
        if result is not None:
            return result
        if wake is None:
            time.sleep(interval)
        else:
            wake.wait(interval)
            wake.clear()


def watch(jobs: Sequence[Followed], on_update: Callable[[dict[str, BatchState]], None] | None = None, *,
          before_poll: Callable[[], None] | None = None, interval: float = POLL_INTERVAL_S) -> dict[str, BatchState]:
    """Follow every array of ``jobs`` (each batch asked of the latest array that ran it)
    until each batch is final, then remove the specs of tasks that never started.
    ``before_poll`` acts between polls (a signal handler only records a signal; this loop
    cancels), ``on_update`` gets the states after each poll."""

    def round_() -> dict[str, BatchState] | None:
        if before_poll is not None:
            before_poll()
        states = current_states(jobs)
        if on_update:
            on_update(states)
        if all(s in FINAL_STATES for s in states.values()):
            for job in jobs:
                job.remove_specs()
            return states
        return None

    return _every(interval, round_)


@dataclass(eq=False)
class Following:
    """One batch a :class:`Watcher` follows for a runner thread."""

    job: Followed
    batch_id: str
    cancel: threading.Event
    stop: Callable[[], None]
    done: threading.Event = field(default_factory=threading.Event)
    cancelled: bool = False  # the result: the batch was cancelled (or given up on after scancel)
    cancelled_at: float | None = None
    failing_since: float | None = None

    def wait(self) -> bool:
        """Block until the batch is final (or given up on); True if it was cancelled."""
        self.done.wait()
        return self.cancelled


class Watcher:
    """Follows every batch a long-running process (the agency server) submitted to Slurm: one
    background thread, one :class:`SlurmView` (one ``squeue``) per round for all of them.

    Before each poll it stops the batches whose ``cancel`` event is set; it gives up on a
    batch when Slurm could not be asked for ``outage_s`` (stopping it: never left running
    unwatched), or ``cancel_wait_s`` after stopping it."""

    def __init__(self, interval: float = SERVER_POLL_INTERVAL_S, *, outage_s: float = SLURM_OUTAGE_S,
                 cancel_wait_s: float = CANCEL_WAIT_S):
        self.interval = interval
        self.outage_s = outage_s
        self.cancel_wait_s = cancel_wait_s
        self.rounds = 0
        self._followings: list[Following] = []
        self._endings: list[tuple[str, Callable[[], None], float]] = []  # job id, action, since
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def follow(self, job: Followed, batch_id: str, cancel: threading.Event,
               stop: Callable[[], None]) -> Following:
        """Follow ``batch_id`` of ``job``; ``stop`` cancels it in Slurm once ``cancel`` is set."""
        following = Following(job, batch_id, cancel, stop)
        with self._lock:
            self._followings.append(following)
            self._start()
        return following

    def when_gone(self, job_id: str, action: Callable[[], None]) -> None:
        """Call ``action`` (in the watcher's thread) once Slurm no longer queues a task of
        ``job_id``: a packed submission's directory outlives its last pending worker, which
        otherwise could not even start (its log file is there)."""
        with self._lock:
            self._endings.append((job_id, action, time.monotonic()))
            self._start()

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=_every, args=(self.interval, self._round, self._wake),
                                            name="slurm-watcher", daemon=True)
            self._thread.start()

    def _round(self) -> None:
        try:
            self._poll_round()
        except Exception:  # the thread follows every batch of the server: it never dies
            log.exception("a round of the Slurm watcher failed")
        return None

    def _poll_round(self) -> None:
        with self._lock:
            followings = list(self._followings)
            endings = list(self._endings)
        if not followings and not endings:
            return
        self.rounds += 1
        now = time.monotonic()
        for following in followings:
            if following.cancel.is_set() and following.cancelled_at is None:
                following.cancelled_at = now
                self._stop_quietly(following)
        wanted: dict[Followed, set[str]] = {}
        for following in followings:
            wanted.setdefault(following.job, set()).add(following.batch_id)
        view = SlurmView([*(job.job_id for job in wanted if job.wants_queue()), *(e[0] for e in endings)])
        for ending in endings:
            self._end(ending, view, now)
        states: dict[Followed, dict[str, BatchState]] = {}
        errors: dict[Followed, FaiceError] = {}
        for job, batch_ids in wanted.items():
            try:
                states[job] = job.poll(batch_ids, view)
            except FaiceError as exc:
                errors[job] = exc
            except Exception as exc:  # never let one job stop the loop of every other
                log.exception("following Slurm job %s failed", job.job_id)
                errors[job] = FaiceError(f"internal error: {type(exc).__name__}: {exc}")
        now = time.monotonic()
        for following in followings:
            self._settle(following, states.get(following.job, {}).get(following.batch_id),
                         errors.get(following.job), now)

    def _end(self, ending: tuple[str, Callable[[], None], float], view: SlurmView, now: float) -> None:
        job_id, action, since = ending
        try:
            if any(not t.is_final for t in view.queued(job_id).values()):
                return
        except FaiceError as exc:
            if now - since <= self.outage_s:
                log.warning("Slurm job %s: asking Slurm failed: %s", job_id, exc)
                return
        with self._lock:
            self._endings.remove(ending)
        try:
            action()
        except Exception:
            log.exception("cleaning up after Slurm job %s failed", job_id)

    def _settle(self, following: Following, state: BatchState | None, error: FaiceError | None, now: float) -> None:
        """Whether the batch is done after this round (wakes its runner thread)."""
        if error is not None:
            following.failing_since = following.failing_since or now
            log.warning("batch %s: asking Slurm failed: %s", following.batch_id, error)
            if now - following.failing_since > self.outage_s:
                self._stop_quietly(following)
                return self._finish(following, following.cancelled_at is not None)
        else:
            following.failing_since = None
        if state in FINAL_STATES:
            return self._finish(following, following.cancelled_at is not None)
        if following.cancelled_at is not None and now - following.cancelled_at > self.cancel_wait_s:
            log.warning("batch %s: Slurm job %s did not end within %.0f s of its cancel", following.batch_id,
                        following.job.job_id, self.cancel_wait_s)
            return self._finish(following, True)
        return None

    def _finish(self, following: Following, cancelled: bool) -> None:
        following.cancelled = cancelled
        with self._lock:
            self._followings.remove(following)
        following.done.set()

    @staticmethod
    def _stop_quietly(following: Following) -> None:
        """Cancel; a failure is logged, not raised (the caller is already giving up on the job)."""
        try:
            following.stop()
        except Exception as exc:
            log.warning("batch %s: cancelling it in Slurm job %s failed: %s", following.batch_id,
                        following.job.job_id, exc)


_SHARED: Watcher | None = None
_SHARED_LOCK = threading.Lock()


def shared_watcher() -> Watcher:
    """The process's one :class:`Watcher` (every Slurm runner of a server uses it)."""
    global _SHARED
    with _SHARED_LOCK:
        if _SHARED is None:
            _SHARED = Watcher()
        return _SHARED
