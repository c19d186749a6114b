"""No user can stall the agency for the others (issue 19, review 1.4): the dispatcher looked
only at the first 1,000 registered batches, so 1,001 of one user's batches waiting at their
``batchConcurrencyLimit`` kept every later batch of everyone from starting; and a freed slot
always went to the oldest experiment, so a long sweep ran to its end before anyone else's
batch. Against a real ``faice agency serve`` running Docker batches."""

from __future__ import annotations

import time

import agency_reds as reds


def _sweep(count: int, seconds: int, limit: int | None = None) -> dict:
    red = reds.minimal(command="sleep", value=str(seconds))
    red["cli"]["inputs"]["n"] = {"type": "float", "inputBinding": {"position": 1}}  # sleep adds it up
    red["sweep"] = {"grid": {"n": [i / 10000 for i in range(count)]}}
    if limit is not None:
        red["execution"]["settings"]["batchConcurrencyLimit"] = limit
    return red


def _count(server, experiment: str, state: str, user: str = "alice") -> int:
    response = server.get("/batches/count", user, params={"experimentId": experiment, "state": state})
    return response.json()["count"]


def _wait_running(server, experiment: str, count: int, user: str = "alice") -> None:
    deadline = time.time() + 90
    while _count(server, experiment, "processing", user) < count:
        assert time.time() < deadline, server.log.read_text()[-3000:]
        time.sleep(0.3)


def test_a_thousand_waiting_batches_of_one_user_do_not_stall_another(make_agency, test_image):
    server = make_agency("--parallel", "4")
    backlog = server.submit(_sweep(1010, 300, limit=2), "alice")
    _wait_running(server, backlog, 2)
    (other,) = server.batch_ids(server.submit(reds.minimal(), "bob"), "bob")
    assert server.wait_state(other, user="bob", timeout=60)["state"] == "succeeded"
    assert _count(server, backlog, "processing") == 2 and _count(server, backlog, "registered") == 1008
    for batch_id in server.batch_ids(backlog)[:2]:
        server.delete(f"/batches/{batch_id}")


def test_a_freed_slot_goes_to_the_user_holding_fewest(make_agency, test_image):
    server = make_agency("--parallel", "2")
    sweep = server.submit(_sweep(12, 5), "alice")
    _wait_running(server, sweep, 2)
    (other,) = server.batch_ids(server.submit(reds.minimal(), "bob"), "bob")
    assert server.wait_state(other, user="bob", timeout=60)["state"] == "succeeded"
    waiting = _count(server, sweep, "registered")
    assert waiting >= 6, f"bob's one batch waited for {12 - 2 - waiting} of alice's queued batches"
