"""Requests that would exhaust the agency (issue 12, items 6 and 10): deep JSON, huge bodies,
sweeps of 10^8 batches, unbounded listings — each refused with a clear 4xx, never a 500."""

from __future__ import annotations

import json
import time

import agency_reds as reds
import requests

from faice.engines.agency.client import AgencyClient


def test_deeply_nested_json_is_400_without_traceback(paused_agency):
    server = paused_agency
    for body in ("[" * 100_000 + "]" * 100_000, json.dumps({"redVersion": "9", "cli": {}, "x": _nested(150)})):
        response = server.post_red(body)
        assert response.status_code == 400, response.text
        assert "nested more than 100 levels" in response.json()
    assert "Traceback" not in server.log.read_text()
    assert server.get("/experiments/count").json() == {"count": 0}


def _nested(depth: int):
    node: dict = {}
    for _ in range(depth):
        node = {"a": node}
    return node


def test_body_over_the_limit_is_413_with_the_limit_named(make_agency):
    server = make_agency("--paused", "--max-request-bytes", "2000")
    red = reds.minimal(value="x" * 3000)
    response = server.post_red(red)
    assert response.status_code == 413
    assert "2000 bytes" in response.json() and "--max-request-bytes" in response.json()
    assert server.post_red(reds.minimal()).status_code == 200


def test_sweep_bomb_is_refused_before_expansion(paused_agency):
    red = reds.minimal()
    red["sweep"] = {"grid": {f"p{i}": list(range(10)) for i in range(8)}}  # 10^8 batches in ~200 bytes
    started = time.monotonic()
    response = paused_agency.post_red(red)
    assert time.monotonic() - started < 5
    assert response.status_code == 400
    assert "100000000 batches" in response.json() and "--max-batches" in response.json()


def test_max_batches_counts_a_sweep_as_faice_exec_does(make_agency):
    """--max-batches counts what the sweep yields, as faice exec does: a 1000x1000 grid capped
    by maxBatches: 10 is 10 batches (accepted), and a random sweep of 50,000 without
    ``samples`` is 50,000 (refused; it once counted as 1 and slipped past the limit)."""
    server = make_agency("--paused", "--max-batches", "10000")
    capped = reds.minimal(value="$(sweep.x)-$(sweep.y)")
    capped["sweep"] = {"grid": {"x": list(range(1000)), "y": list(range(1000))}, "maxBatches": 10}
    response = server.post_red(capped)
    assert response.status_code == 200, response.text
    experiment = response.json()["experimentId"]
    assert server.get("/batches/count", params={"experimentId": experiment}).json() == {"count": 10}
    bomb = reds.minimal(value="$(sweep.lr)")
    bomb["sweep"] = {"random": {"parameters": {"lr": {"uniform": [0, 1]}}}, "maxBatches": 50000}
    started = time.monotonic()
    refused = server.post_red(bomb)
    assert time.monotonic() - started < 5
    assert refused.status_code == 400 and "50000 batches" in refused.json() and "--max-batches" in refused.json()
    assert server.get("/experiments/count").json() == {"count": 1}


def test_batches_and_expanded_size_limits(make_agency):
    server = make_agency("--paused", "--max-batches", "3", "--max-red-bytes", "20000")
    assert server.post_red(reds.multi_batch(["a", "b", "c"])).status_code == 200
    too_many = server.post_red(reds.multi_batch(["a", "b", "c", "d"]))
    assert too_many.status_code == 400 and "4 batches" in too_many.json()
    red = reds.minimal(value="y" * 8000)
    red["sweep"] = {"grid": {"n": [1, 2, 3]}}  # three copies of an 8 kB template: over 20000 bytes
    big = server.post_red(red)
    assert big.status_code == 400 and "--max-red-bytes" in big.json()


def test_listings_have_a_default_page_and_the_client_reads_every_page(paused_agency):
    server = paused_agency
    experiment = server.submit(reds.multi_batch([str(i) for i in range(1005)]))
    assert len(server.get("/batches").json()) == 1000
    assert len(server.get("/batches", params={"limit": 2000}).json()) == 1005
    assert len(server.get("/batches", params={"skip": 1000}).json()) == 5
    client = AgencyClient(server.url, server.name("alice"), server.users["alice"])
    found = client.experiment_batches(experiment)
    assert [b["batchesListIndex"] for b in found] == list(range(1005))
    assert requests.get(server.url + "/batches/count", auth=server.auth("alice"), timeout=10).json() == {"count": 1005}
