"""The batch queue of a packed Slurm run: claims that hold on NFS-like shared file systems.

Workers on different nodes share nothing but the run directory, whose file system may be NFS:
``flock``/``fcntl`` locks are unreliable there, but ``rename`` and ``mkdir`` of one path are
atomic on the server. Every batch (by its task number ``n``) is one empty file whose name
carries a *generation* ``g``, in exactly one of three directories::

    queue/ready/<n>.<g>     waiting for a worker
    queue/claimed/<n>.<g>   leased by a worker; its mtime is the lease's heartbeat
    queue/done/<n>.<g>      final: its record is (being) written into batches/<id>/
    queue/cancel/<n>        a request to cancel batch n wherever it runs
    queue/CANCEL            the whole run is being cancelled: claim nothing more
    queue/OPEN              more batches may come (a search adds its trials while workers run)

* **claim**: ``rename(ready/n.g, claimed/n.g)``; of two workers racing, one gets ENOENT.
* **heartbeat**: the holder touches ``claimed/n.g`` every few seconds (server time on NFS).
* **expiry**: a reaper that sees the same mtime for ``lease`` seconds of its *own* monotonic
  clock (no clock of another node is compared) moves ``claimed/n.g`` to ``ready/n.(g+1)``.
* **fencing**: a worker publishes its batch's record only after ``rename(claimed/n.g,
  done/n.g)`` succeeded; once the lease was taken from it that path is gone (the next holder
  has generation g+1), so a worker that lost its lease can never write the record, and of a
  holder and a reaper racing for the same lease exactly one wins.
* **an open queue**: a driver that adds batches while the workers run (``sweep.search``)
  writes ``ready/n.0`` for each (its spec first) and touches ``OPEN`` as its heartbeat; an idle
  worker waits for more while that heartbeat goes on (its mtime changing within ``lease``
  seconds of the worker's own clock, as for a claim), and ends once the driver closed the
  queue (removed ``OPEN``) or stopped touching it (it died: its trials can never be told).
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

READY, CLAIMED, DONE = "ready", "claimed", "done"


@dataclass(frozen=True, order=True)
class Claim:
    """A lease on batch ``task`` at ``generation``: valid while ``claimed/<task>.<generation>`` exists."""

    task: int
    generation: int

    @property
    def name(self) -> str:
        return f"{self.task}.{self.generation}"


def _parse(name: str) -> Claim | None:
    task, _, generation = name.partition(".")
    if task.isdigit() and generation.isdigit():
        return Claim(int(task), int(generation))
    return None


class ClaimQueue:
    """The queue directory of one packed submission (``slurm/<tag>/queue``)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._seen: dict[str, tuple[int, float]] = {}  # claimed name -> (mtime_ns, first seen unchanged)
        self._open_seen: tuple[int, float] | None = None  # OPEN's (mtime_ns, first seen unchanged)
        self._lock = threading.Lock()

    def _dir(self, kind: str) -> Path:
        return self.root / kind

    def _path(self, kind: str, claim: Claim) -> Path:
        return self._dir(kind) / claim.name

    # ------------------------------------------------------------------ setup

    def create(self, count: int) -> None:
        """Put tasks ``0..count-1`` in the queue (generation 0)."""
        for kind in (READY, CLAIMED, DONE, "cancel"):
            self._dir(kind).mkdir(parents=True, exist_ok=True)
        for task in range(count):
            self._path(READY, Claim(task, 0)).touch()

    # ------------------------------------------------------------------ reading

    def _list(self, kind: str) -> list[Claim]:
        try:
            names = os.listdir(self._dir(kind))
        except FileNotFoundError:
            return []
        return sorted(c for c in map(_parse, names) if c is not None)

    def scan(self) -> dict[int, tuple[str, Claim]]:
        """Where every task is now: ``{task: (ready|claimed|done, claim)}`` (three listings)."""
        found: dict[int, tuple[str, Claim]] = {}
        # done last: a task moving ready -> claimed -> done during the scan is seen at its latest.
        for kind in (READY, CLAIMED, DONE):
            for claim in self._list(kind):
                found[claim.task] = (kind, claim)
        return found

    def anything_open(self) -> bool:
        """Whether a task is still ready or claimed. Claimed is listed first: a claim going
        back (claimed -> ready) between the two listings is then seen in one of them."""
        return bool(self._list(CLAIMED) or self._list(READY))

    def more_may_come(self, lease_s: float) -> bool:
        """Whether the queue is open and its driver alive: ``OPEN`` exists and its mtime changed
        within ``lease_s`` seconds (as this process measures them)."""
        try:
            mtime = os.stat(self.root / "OPEN").st_mtime_ns
        except FileNotFoundError:
            return False
        now = time.monotonic()
        if self._open_seen is None or self._open_seen[0] != mtime:
            self._open_seen = (mtime, now)
        return now - self._open_seen[1] < lease_s

    def left_open(self) -> bool:
        """``OPEN`` is still there: its driver never closed the queue (once :meth:`more_may_come`
        said no, the driver died)."""
        return (self.root / "OPEN").exists()

    def drained(self) -> bool:
        """Closed and nothing ready or claimed: its workers can only end."""
        return not (self.root / "OPEN").exists() and not self.anything_open()

    def cancel_requested(self) -> bool:
        return (self.root / "CANCEL").exists()

    def cancel_requested_for(self, task: int) -> bool:
        return (self._dir("cancel") / str(task)).exists()

    # ------------------------------------------------------------------ worker side

    def claim(self, start: int = 0) -> Claim | None:
        """Lease the first ready task (from ``start`` on, to spread racing workers), or None."""
        ready = self._list(READY)
        if start and ready:
            start %= len(ready)
            ready = ready[start:] + ready[:start]
        for claim in ready:
            try:
                os.rename(self._path(READY, claim), self._path(CLAIMED, claim))
            except FileNotFoundError:
                continue  # another worker was faster
            self.heartbeat(claim)
            return claim
        return None

    def heartbeat(self, claim: Claim) -> bool:
        """Renew the lease; False when it is lost (expired and taken, or finished by the canceller)."""
        try:
            os.utime(self._path(CLAIMED, claim), None)  # None: the server's time on NFS
            return True
        except FileNotFoundError:
            return False

    def commit(self, claim: Claim) -> bool:
        """End the lease as final; True only for the holder of the current generation, who may
        then (and only then) publish the batch's record."""
        try:
            os.rename(self._path(CLAIMED, claim), self._path(DONE, claim))
            return True
        except FileNotFoundError:
            return False

    def release(self, claim: Claim) -> bool:
        """Give the task back to the queue (the worker is stopping before the batch ended)."""
        return self._move(CLAIMED, claim, READY, Claim(claim.task, claim.generation + 1))

    def reap(self, lease_s: float) -> list[Claim]:
        """Put back the claims whose heartbeat stopped for ``lease_s`` seconds (as this process
        measures them); returns the claims taken back."""
        now = time.monotonic()
        taken: list[Claim] = []
        with self._lock:
            current = {c.name: c for c in self._list(CLAIMED)}
            for name in list(self._seen):
                if name not in current:
                    del self._seen[name]
            for name, claim in current.items():
                try:
                    mtime = os.stat(self._path(CLAIMED, claim)).st_mtime_ns
                except FileNotFoundError:
                    continue
                seen = self._seen.get(name)
                if seen is None or seen[0] != mtime:
                    self._seen[name] = (mtime, now)
                elif now - seen[1] >= lease_s and self.release(claim):
                    del self._seen[name]
                    taken.append(claim)
        return taken

    # ------------------------------------------------------------------ driver side (an open queue)

    def hold_open(self) -> None:
        """Open the queue, or renew the driver's heartbeat on it (the server's time on NFS)."""
        path = self.root / "OPEN"
        try:
            os.utime(path, None)
        except FileNotFoundError:
            path.touch()

    def add(self, task: int) -> None:
        """Task ``task`` (its spec written) waits for a worker."""
        self._path(READY, Claim(task, 0)).touch(exist_ok=False)

    def close(self) -> None:
        """No more batches: workers end once the queue is empty."""
        (self.root / "OPEN").unlink(missing_ok=True)

    # ------------------------------------------------------------------ canceller side

    def request_cancel_all(self) -> None:
        (self.root / "CANCEL").touch()

    def request_cancel(self, task: int) -> None:
        (self._dir("cancel") / str(task)).touch()

    def finish(self, task: int, kinds: tuple[str, ...] = (READY,)) -> Claim | None:
        """Make a task final from ``kinds`` (a waiting one cancelled, or one no worker is left
        to run); the claim moved, or None when the task was elsewhere."""
        for kind in kinds:
            for claim in self._list(kind):
                if claim.task == task and self._move(kind, claim, DONE, claim):
                    return claim
        return None

    def _move(self, kind: str, claim: Claim, to_kind: str, to: Claim) -> bool:
        try:
            os.rename(self._path(kind, claim), self._path(to_kind, to))
            return True
        except FileNotFoundError:
            return False
