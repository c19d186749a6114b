"""The agency keeps working when its surroundings do not: PostgreSQL restarts under it,
notification hooks are down or fail for a while, and stopping never waits for them.
Batches of one experiment are listed in the RED's order, like upstream."""

from __future__ import annotations

import sqlite3
import threading
import time

import agency_reds as reds
from agency_helpers import HookServer, free_port


def _cancelled_experiment(server, values: list[str]) -> list[str]:
    """Submit to a paused agency and cancel every batch: final states without Docker."""
    ids = server.batch_ids(server.submit(reds.multi_batch(values)))
    for batch_id in ids:
        assert server.delete(f"/batches/{batch_id}").json()["state"] == "cancelled"
    return ids


def _sent_flags(server) -> dict[str, int]:
    conn = sqlite3.connect(server.dir / "agency.db")
    try:
        return dict(conn.execute("SELECT id, notifications_sent FROM batches"))
    finally:
        conn.close()


def _wait_log(server, text: str, timeout: float) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if text in server.log.read_text():
            return True
        time.sleep(0.1)
    return False


# ---------------------------------------------------------------- PostgreSQL restarts


def test_requests_succeed_after_postgresql_restarts(make_agency, own_postgres):
    server = make_agency("--paused", db_url=own_postgres.url)
    experiment_id = server.submit(reds.multi_batch(["a", "b"]))
    ids = server.batch_ids(experiment_id)

    own_postgres.restart()  # every connection the agency had is terminated
    responses = [server.get(f"/batches/{ids[0]}"), server.get("/experiments"), server.post_red(reds.minimal())]
    assert [r.status_code for r in responses] == [200, 200, 200], [r.text for r in responses]
    assert responses[1].json()[0]["_id"] == experiment_id
    assert server.get("/experiments").json()[0]["_id"] == responses[2].json()["experimentId"]
    assert server.delete(f"/batches/{ids[1]}").json()["state"] == "cancelled"  # a write transaction too

    # A short outage: a request made while the database is down waits for it and succeeds.
    own_postgres.stop()
    restarter = threading.Timer(2.0, own_postgres.start)
    restarter.start()
    try:
        started = time.time()
        response = server.get(f"/batches/{ids[1]}")
        assert response.status_code == 200, response.text
        assert response.json()["state"] == "cancelled"
        assert time.time() - started >= 1.5  # it really waited for the restart
    finally:
        restarter.join()
    assert server.get("/experiments/count").json() == {"count": 2}
    assert server.proc.poll() is None


def test_a_statement_whose_connection_drops_is_retried_once(own_postgres):
    """The connection dies between the pool's check and the statement (here: the statement
    itself ends its backend, the first time only): retried once on a fresh connection."""
    from faice.agency.db import Database

    db = Database(own_postgres.url)
    try:
        db.execute("CREATE SEQUENCE drops")
        first_time_fatal = "SELECT CASE WHEN nextval('drops') = 1 THEN pg_terminate_backend(pg_backend_pid()) ELSE true END"
        assert db.query(first_time_fatal) == [(True,)]
        assert db.query("SELECT last_value FROM drops") == [(2,)]
    finally:
        db.close()


# ---------------------------------------------------------------- notifications


def test_stop_does_not_wait_for_a_down_hook_and_unsent_are_sent_after_restart(make_agency):
    port = free_port()  # nothing listens here yet: the hook is down
    server = make_agency("--paused", "--notification-hook", f"http://127.0.0.1:{port}/notification_hook")
    first = _cancelled_experiment(server, ["a", "b", "c"])
    second = _cancelled_experiment(server, ["d"])
    _wait_log(server, "not delivered", timeout=4)  # a post was tried and failed (refused)

    started = time.time()
    server.stop()
    took = time.time() - started
    assert took < 3.0, f"stopping took {took:.1f} s"
    assert "stopping: " in server.log.read_text()
    assert "not delivered (attempt 1" in server.log.read_text()
    assert _sent_flags(server) == {i: 0 for i in first + second}  # undelivered: not marked

    hook = HookServer(port)
    try:
        server.start()
        accepted = hook.wait_accepted(1)
        assert accepted, server.log.read_text()[-2000:]
        delivered = [b for r in accepted for b in r["body"]["batches"]]
        assert sorted(b["batchId"] for b in delivered) == sorted(first + second)
        assert {b["state"] for b in delivered} == {"cancelled"}
        deadline = time.time() + 10
        while set(_sent_flags(server).values()) != {1} and time.time() < deadline:
            time.sleep(0.1)
        assert _sent_flags(server) == {i: 1 for i in first + second}
        time.sleep(2.5)  # dispatcher rounds after the marking send nothing again
        assert len(hook.received) == len(accepted)
    finally:
        hook.close()


def test_failing_hook_is_retried_with_backoff_and_marked_only_after_success(make_agency):
    flags_while_failing: list[dict[str, int]] = []
    holder: dict = {}
    hook = HookServer(fail_first=2, on_post=lambda n: flags_while_failing.append(_sent_flags(holder["server"])))
    try:
        server = holder["server"] = make_agency("--paused", "--notification-hook", hook.url)
        ids = _cancelled_experiment(server, ["a", "b"])
        accepted = hook.wait_accepted(1, timeout=30)
        assert len(accepted) == 1, server.log.read_text()[-2000:]
        # 503, 503, then 200: the same message each time, in the RED's batch order
        assert [r["status"] for r in hook.received] == [503, 503, 200]
        assert all(r["body"] == {"batches": [{"batchId": i, "state": "cancelled"} for i in ids]} for r in hook.received)
        # not marked while the hook failed (nor while the successful post was in flight)
        assert flags_while_failing == [{i: 0 for i in ids}] * 3
        gaps = [b["time"] - a["time"] for a, b in zip(hook.received, hook.received[1:], strict=False)]
        assert gaps[0] >= 0.9 and gaps[1] >= 1.8, gaps  # 1 s, then 2 s
        deadline = time.time() + 10
        while not all(server.get(f"/batches/{i}").json()["notificationsSent"] for i in ids) and time.time() < deadline:
            time.sleep(0.1)
        assert all(server.get(f"/batches/{i}").json()["notificationsSent"] for i in ids)
        assert "not delivered (attempt 1" in server.log.read_text()
    finally:
        hook.close()


# ---------------------------------------------------------------- listing order


def test_batches_of_an_experiment_are_listed_in_red_order(paused_agency):
    first = paused_agency.submit(reds.multi_batch(["a", "b", "c"]))
    second = paused_agency.submit(reds.multi_batch(["d", "e"]))

    def listed(**params) -> list[tuple[str, int]]:
        response = paused_agency.get("/batches", params=params)
        assert response.status_code == 200, response.text
        return [(b["experimentId"], b["batchesListIndex"]) for b in response.json()]

    # newest experiment first (upstream's default), its batches in the RED's order
    assert listed() == [(second, 0), (second, 1), (first, 0), (first, 1), (first, 2)]
    assert listed(ascending="true") == [(first, 0), (first, 1), (first, 2), (second, 0), (second, 1)]
    assert listed(experimentId=first) == [(first, 0), (first, 1), (first, 2)]
