"""The agency places batches like ``faice exec``: free GPUs, RAM, the server-wide cap and
each experiment's ``batchConcurrencyLimit``.

The GPU test runs the real dispatcher, store, vault and batch pipeline in-process, with an
injected one-GPU inventory and the fake container runtime of ``tests/fake_runtime.py``:
no GPU and no nvidia container runtime exist on the development machines, so Docker could
not start a container with a device request. The concurrency-limit test runs against a real
``faice agency serve`` with real Docker containers.
"""

from __future__ import annotations

import itertools
import time
from datetime import datetime

import pytest
from agency_reds import multi_batch, sleeping
from fake_runtime import FakeRuntime

from faice.agency.db import Database
from faice.agency.dispatcher import Dispatcher
from faice.agency.placement import Admission
from faice.agency.runner import PipelineRunner
from faice.agency.store import FINAL_STATES, Store
from faice.agency.submit import build_documents
from faice.agency.vault import Vault, load_or_create_key
from faice.pipeline.host import Host
from faice.runtime.gpus import Gpu, GpuAllocator


def _gpu_red(shared: bool = False) -> dict:
    red = sleeping(1)
    red["container"]["settings"]["gpus"] = (
        {"vendor": "nvidia", "count": 1, "vram": 10000, "shared": True} if shared else {"vendor": "nvidia", "count": 1})
    return red


def _server(tmp_path, gpus: list[Gpu], runtime: FakeRuntime) -> tuple[Store, Vault, Dispatcher]:
    db = Database(f"sqlite:///{tmp_path}/agency.db")
    store = Store(db)
    vault = Vault(db, load_or_create_key(str(tmp_path / "key")))
    runner = PipelineRunner(Host(GpuAllocator(gpus), runtime))
    return store, vault, Dispatcher(store, vault, runner, tmp_path / "work", parallel=4)


def _submit(store: Store, vault: Vault, red: dict) -> list[str]:
    experiment, batches = build_documents(red, "alice", vault, disable_retry=True, disable_connector_validation=True)
    store.insert_experiment(experiment, batches, user="alice")
    return [b["_id"] for b in batches]


def _wait_final(store: Store, ids: list[str], timeout: float = 30) -> list[dict]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        batches = [store.batch(i) for i in ids]
        if all(b and b["state"] in FINAL_STATES for b in batches):
            return batches  # type: ignore[return-value]
        time.sleep(0.1)
    raise AssertionError(f"not final: {[store.batch(i)['state'] for i in ids]}")


def test_second_gpu_batch_waits_for_the_only_gpu(tmp_path):
    runtime = FakeRuntime(seconds=1.0)
    store, vault, dispatcher = _server(tmp_path, [Gpu("0", "GPU-only", 16000, "T4", "535.1")], runtime)
    first = _submit(store, vault, _gpu_red())
    second = _submit(store, vault, _gpu_red())
    dispatcher.start()
    try:
        seen_together = False
        deadline = time.time() + 30
        while time.time() < deadline:
            states = [store.batch(first[0])["state"], store.batch(second[0])["state"]]
            if states.count("processing") + states.count("scheduled") > 1:
                seen_together = True
            if all(s in FINAL_STATES for s in states):
                break
            time.sleep(0.02)
        batches = _wait_final(store, first + second)
    finally:
        dispatcher.stop()
    assert not seen_together  # the second stayed registered while the first held the GPU
    assert [b["state"] for b in batches] == ["succeeded", "succeeded"]
    spans = sorted(runtime.spans.values())
    assert spans[1][0] >= spans[0][1]  # the containers never overlapped
    assert set(sum(runtime.gpu_ids().values(), [])) == {"GPU-only"}


def test_shared_gpu_batches_run_together_on_one_device(tmp_path):
    runtime = FakeRuntime(seconds=1.5)
    store, vault, dispatcher = _server(tmp_path, [Gpu("0", "GPU-only", 24000, "A10", "535.1")], runtime)
    ids = [i for _ in range(3) for i in _submit(store, vault, _gpu_red(shared=True))]
    dispatcher.start()
    try:
        batches = _wait_final(store, ids)
    finally:
        dispatcher.stop()
    assert [b["state"] for b in batches] == ["succeeded"] * 3
    spans = sorted(runtime.spans.values())
    assert spans[1][0] < spans[0][1]  # two 10 GB batches shared the 24 GB device ...
    assert spans[2][0] >= min(spans[0][1], spans[1][1])  # ... the third had to wait for one of them


def test_admission_honours_cap_limit_and_ram():
    admission = Admission(3, ram_mb=1000)
    limited = {"settings": {"batchConcurrencyLimit": 1}}
    one = admission.admit("e1", limited, {"ram": 256})
    assert one is not None and admission.admit("e1", limited, {"ram": 256}) is None
    two = admission.admit("e2", None, {"ram": 600})
    assert two is not None and admission.admit("e2", None, {"ram": 600}) is None  # RAM would be over
    three = admission.admit("e3", None, {"ram": 100})
    assert three is not None and admission.full and admission.admit("e4", None, {}) is None
    admission.release(one)
    assert admission.admit("e1", limited, {"ram": 256}) is not None


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
