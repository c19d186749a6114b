"""The page of a 10,000-batch run in at most a second, and live ticks that cost what changed.

Synthetic records (every batch directory and record a finished sweep leaves, run.json with
each batch's metrics summary) through the records API; the server is a real ``faice ui``.
"""

from __future__ import annotations

import time

import pytest
from ui_helpers import eventually, finish_batches, start_ui, synthetic_run

from faice.agency.ui.rundirs import DirSource
from faice.pipeline import results as results_api

BATCHES = 10_000


@pytest.fixture(scope="module")
def big_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("big")
    synthetic_run(root / "r10k", BATCHES, running=3, records=BATCHES)
    return root


def test_the_page_of_a_10000_batch_run_is_served_within_a_second(big_run, tmp_path):
    server = start_ui(tmp_path / "ui.log", str(big_run))
    try:
        assert eventually(lambda: "r10k" in server.get("/").text, timeout=60)  # read once, at start
        timings = []
        for _ in range(3):
            started = time.perf_counter()
            page = server.get("/runs/r10k/")
            timings.append(time.perf_counter() - started)
            assert page.status_code == 200 and page.text.count("<tr data-batch=") == 100
        assert "10000 batches" in page.text and page.text.count("<svg") == 2  # a scatter per parameter
        assert min(timings) <= 1.0, timings
        sorted_page = time.perf_counter()
        assert server.get("/runs/r10k/?sort=param.learning_rate&order=desc&page=7").status_code == 200
        assert time.perf_counter() - sorted_page <= 1.0
        print(f"10,000-batch run page: {', '.join(f'{t * 1000:.0f} ms' for t in timings)}")
    finally:
        server.stop()


def test_a_tick_costs_what_changed_not_the_run(big_run, monkeypatch):
    """Ticks with nothing new read no record; one change makes one read of the run, however
    many pages and ticks ask, and the answer names the one batch."""
    reads = []
    original = results_api.load_results
    monkeypatch.setattr(results_api, "load_results", lambda *a, **k: reads.append(1) or original(*a, **k))
    source = DirSource([big_run], watch=True)
    view = source.run(None, "r10k")
    assert len(reads) == 1
    started = time.perf_counter()
    for _ in range(50):
        assert source.run(None, "r10k", since=view.version).changed == frozenset()
    per_tick = (time.perf_counter() - started) / 50
    assert len(reads) == 1 and per_tick < 0.01, per_tick  # no reading at all: the watcher's stat decides
    finish_batches(big_run / "r10k", ["s-00009999"], value=0.99)
    changed = eventually(lambda: source.run(None, "r10k", since=view.version).changed)
    assert changed == frozenset({"s-00009999"})
    for _ in range(20):
        assert source.run(None, "r10k", since=view.version).changed == frozenset({"s-00009999"})
    assert len(reads) == 2
    print(f"tick without changes: {per_tick * 1e6:.0f} µs")
