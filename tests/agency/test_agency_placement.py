"""The agency honours ``batchConcurrencyLimit`` against a real ``faice agency serve`` with real
Docker containers (GPU and RAM placement by the dispatcher is tested in-process in
tests/pipeline/test_gpu_placement_pipeline.py).
"""

from __future__ import annotations

import itertools
import time
from datetime import datetime

import pytest
from agency_reds import multi_batch


@pytest.mark.docker
def test_batch_concurrency_limit_one_never_overlaps(agency):
    red = multi_batch(["a", "b", "c"], url=agency.url, command=["sh", "-c", "sleep 1; echo $0"])
    red["execution"]["settings"]["batchConcurrencyLimit"] = 1
    experiment_id = agency.submit(red)
    ids = agency.batch_ids(experiment_id)
    overlap = False
    deadline = time.time() + 120
    while time.time() < deadline:
        states = [agency.get(f"/batches/{i}").json()["state"] for i in ids]
        if sum(s in ("scheduled", "processing") for s in states) > 1:
            overlap = True
        if all(s in ("succeeded", "failed", "cancelled") for s in states):
            break
        time.sleep(0.05)
    batches = [agency.get(f"/batches/{i}").json() for i in ids]
    assert [b["state"] for b in batches] == ["succeeded"] * 3, [b.get("debugInfo") for b in batches]
    assert not overlap
    spans = []
    for batch in batches:  # from the server's own history: processing → succeeded
        times = {h["state"]: h["time"] for h in batch["history"]}
        spans.append((_t(times["scheduled"]), _t(times["succeeded"])))
    spans.sort()
    assert all(later[0] >= earlier[1] for earlier, later in itertools.pairwise(spans))


def _t(value) -> float:
    return value if isinstance(value, (int, float)) else datetime.fromisoformat(str(value)).timestamp()
