"""Storage under load and on PostgreSQL: 20 concurrent clients × 10 experiments lose
nothing; the same API works on a real PostgreSQL server and survives a restart."""

from __future__ import annotations

import json
import signal
from concurrent.futures import ThreadPoolExecutor

import agency_reds as reds
import requests

CLIENTS = 20
PER_CLIENT = 10


def _submit_many(server, user: str, count: int) -> list[str]:
    session = requests.Session()
    session.auth = server.auth(user)
    ids = []
    for i in range(count):
        response = session.post(server.url + "/red", data=json.dumps(reds.multi_batch([f"{user}-{i}-a", f"{user}-{i}-b"])),
                                headers={"Content-Type": "application/json"}, timeout=60)
        assert response.status_code == 200, response.text
        ids.append(response.json()["experimentId"])
    return ids


def test_concurrent_clients_lose_nothing(paused_agency):
    users = [f"c{i}" for i in range(CLIENTS)]
    for user in users:
        paused_agency.add_user(user)
    with ThreadPoolExecutor(CLIENTS) as pool:
        results = dict(zip(users, pool.map(lambda u: _submit_many(paused_agency, u, PER_CLIENT), users), strict=True))
    all_ids = [i for ids in results.values() for i in ids]
    assert len(set(all_ids)) == CLIENTS * PER_CLIENT
    for user, ids in results.items():
        listed = paused_agency.get("/experiments", user=user).json()
        assert sorted(e["_id"] for e in listed) == sorted(ids)
        batches = paused_agency.get("/batches", user=user).json()
        assert len(batches) == 2 * PER_CLIENT and all(b["state"] == "registered" for b in batches)
    assert paused_agency.get("/batches/count", user="root").json()["count"] >= 2 * CLIENTS * PER_CLIENT


def test_postgresql_backend_and_restart(make_agency, postgres_db):
    server = make_agency("--paused", db_url=postgres_db)
    experiment_id = server.submit(reds.multi_batch(["a", "b"]))
    ids = server.batch_ids(experiment_id)
    assert len(ids) == 2
    assert server.get(f"/experiments/{experiment_id}").json()["_id"] == experiment_id
    assert server.get("/batches", params={"limit": 1, "state": "registered"}).json()[0]["_id"] in ids
    assert server.get(f"/batches/{ids[1]}", user="bob").status_code == 404
    assert server.delete(f"/batches/{ids[0]}").json()["state"] == "cancelled"
    assert server.post_red(b"{oops").status_code == 400
    server.stop(signal.SIGKILL)
    server.start()
    assert [server.get(f"/batches/{i}").json()["state"] for i in ids] == ["cancelled", "registered"]
    assert server.get("/experiments/count").json() == {"count": 1}
    from urllib.parse import urlsplit

    assert urlsplit(postgres_db).password not in server.log.read_text()  # never logged
