"""The claim queue of packed Slurm runs: real processes racing on one directory (rename-based
claims, leases kept alive by heartbeats, expiry and fencing). No Slurm needed."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from pathlib import Path

from faice.engines.slurm.claims import CLAIMED, DONE, READY, Claim, ClaimQueue

CTX = multiprocessing.get_context("fork")


def _drain(root: str, log: str, start: int) -> None:
    """Claim and commit until the queue is empty, appending 'task.generation' per commit."""
    queue = ClaimQueue(Path(root))
    while (claim := queue.claim(start)) is not None:
        if queue.commit(claim):
            with open(log, "a") as handle:
                handle.write(f"{claim.task}.{claim.generation}\n")


def test_racing_workers_claim_every_task_exactly_once(tmp_path):
    ClaimQueue(tmp_path / "q").create(300)
    logs = [tmp_path / f"log{i}" for i in range(4)]
    procs = [CTX.Process(target=_drain, args=(str(tmp_path / "q"), str(log), i * 7)) for i, log in enumerate(logs)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    committed = [line for log in logs if log.exists() for line in log.read_text().split()]
    assert sorted(committed) == sorted(f"{n}.0" for n in range(300))  # each once, none twice
    assert sum(1 for log in logs if log.exists() and log.read_text()) >= 2  # they really raced
    assert {kind for kind, _ in ClaimQueue(tmp_path / "q").scan().values()} == {DONE}


def _hold(root: str, ready: str, heartbeat: bool) -> None:
    """Claim one task and hold it (heartbeat every 0.2 s, or silent) until killed."""
    queue = ClaimQueue(Path(root))
    claim = queue.claim()
    Path(ready).write_text(claim.name if claim else "none")
    while True:
        if heartbeat:
            queue.heartbeat(claim)
        time.sleep(0.2)


def _holder(tmp_path: Path, heartbeat: bool):
    ClaimQueue(tmp_path / "q").create(1)
    ready = tmp_path / "ready"
    proc = CTX.Process(target=_hold, args=(str(tmp_path / "q"), str(ready), heartbeat))
    proc.start()
    end = time.monotonic() + 10
    while not ready.exists() and time.monotonic() < end:
        time.sleep(0.05)
    assert ready.read_text() == "0.0"
    return proc


def test_a_lease_with_a_heartbeat_is_never_taken(tmp_path):
    proc = _holder(tmp_path, heartbeat=True)
    try:
        queue = ClaimQueue(tmp_path / "q")
        end = time.monotonic() + 2.0
        while time.monotonic() < end:
            assert queue.reap(lease_s=1.0) == []
            assert queue.claim() is None
            time.sleep(0.1)
        assert queue.scan()[0][0] == CLAIMED
    finally:
        proc.kill()
        proc.join()


def test_the_claim_of_a_killed_worker_expires_and_goes_back_with_a_new_generation(tmp_path):
    proc = _holder(tmp_path, heartbeat=True)
    os.kill(proc.pid, signal.SIGKILL)  # the node is lost: no goodbye, no release
    proc.join()
    queue = ClaimQueue(tmp_path / "q")
    assert queue.reap(lease_s=1.0) == []  # first sight starts the lease clock
    assert queue.claim() is None
    time.sleep(1.1)
    assert queue.reap(lease_s=1.0) == [Claim(0, 0)]
    again = queue.claim()
    assert again == Claim(0, 1)
    assert queue.commit(again)


def test_a_worker_whose_lease_was_taken_cannot_commit_or_renew(tmp_path):
    """Fencing: a worker frozen past its lease (SIGSTOP: a long GC, a network partition) wakes
    up after another worker took and finished the batch; its commit must fail."""
    proc = _holder(tmp_path, heartbeat=True)
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        queue = ClaimQueue(tmp_path / "q")
        queue.reap(lease_s=0.5)
        time.sleep(0.6)
        assert queue.reap(lease_s=0.5) == [Claim(0, 0)]
        second = queue.claim()
        assert second == Claim(0, 1)
        stale = Claim(0, 0)
        assert not queue.heartbeat(stale)  # the frozen worker learns it lost the lease
        assert not queue.commit(stale)  # and cannot publish
        assert queue.commit(second)
        assert not queue.release(stale)
        assert queue.scan() == {0: (DONE, second)}
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        proc.kill()
        proc.join()


def test_release_requeues_at_once_and_finish_takes_only_waiting_tasks(tmp_path):
    queue = ClaimQueue(tmp_path / "q")
    queue.create(2)
    first = queue.claim()
    assert first == Claim(0, 0)
    assert queue.release(first)
    assert queue.scan()[0] == (READY, Claim(0, 1))
    assert queue.finish(1) == Claim(1, 0)  # cancelled while waiting
    held = queue.claim()
    assert held == Claim(0, 1)
    assert queue.finish(0) is None  # claimed: only its worker (or a follower with no worker left) ends it
    assert queue.finish(0, (READY, CLAIMED)) == held
    assert not queue.commit(held)


def _claim_until_closed(root: str, log: str, lease_s: float) -> None:
    """A worker's idle loop on an open queue: claim what comes, end once nothing can come."""
    queue = ClaimQueue(Path(root))
    while True:
        claim = queue.claim()
        if claim is not None:
            if queue.commit(claim):
                with open(log, "a") as handle:
                    handle.write(f"{claim.task}\n")
            continue
        if not (queue.anything_open() or queue.more_may_come(lease_s)):
            return
        time.sleep(0.05)


def test_an_open_queue_keeps_its_worker_for_the_batches_added_later_until_the_driver_is_gone(tmp_path):
    queue = ClaimQueue(tmp_path / "q")
    queue.create(0)
    queue.hold_open()
    log = tmp_path / "log"
    worker = CTX.Process(target=_claim_until_closed, args=(str(tmp_path / "q"), str(log), 1.0))
    worker.start()
    for task in range(3):  # a driver adding a trial now and then, its heartbeat going on
        time.sleep(0.4)
        queue.hold_open()
        queue.add(task)
    time.sleep(0.4)
    queue.hold_open()
    assert worker.is_alive(), "the driver is alive: the worker waits for more"
    queue.close()
    worker.join(5)
    assert worker.exitcode == 0 and log.read_text().split() == ["0", "1", "2"]
    # A driver that died (no close, no heartbeat): its workers end after the lease.
    queue.hold_open()
    started = time.monotonic()
    orphan = CTX.Process(target=_claim_until_closed, args=(str(tmp_path / "q"), str(log), 1.0))
    orphan.start()
    orphan.join(10)
    assert orphan.exitcode == 0 and 0.9 <= time.monotonic() - started < 5
