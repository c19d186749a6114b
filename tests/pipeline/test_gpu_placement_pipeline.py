"""GPU placement through the real batch pipeline and the agency dispatcher, with the fake
container runtime of fake_runtime.py: no GPU and no nvidia container runtime exist on the
development machines, so Docker could not start a container with a device request here.
Inventories are injected; the store, vault, dispatcher, runner and pipeline are real.
"""

from __future__ import annotations

import json
import time

from engine_helpers import sh_red
from fake_runtime import FakeRuntime, Played

from faice.agency.db import Database
from faice.agency.dispatcher import Dispatcher
from faice.agency.placement import Admission
from faice.agency.runner import PipelineRunner
from faice.agency.store import FINAL_STATES, Store
from faice.agency.submit import build_documents
from faice.agency.vault import Vault, load_or_create_key
from faice.pipeline.host import Host
from faice.pipeline.options import RunOptions
from faice.pipeline.run import HostRun
from faice.red.prepare import load_experiment
from faice.runtime.gpus import Gpu, GpuAllocator, GpuProcess


def _agency_red(shared: bool = False) -> dict:
    return {
        "redVersion": "9",
        "cli": {"cwlVersion": "v1.0", "class": "CommandLineTool", "baseCommand": ["sleep"],
                "inputs": {"s": {"type": "string", "inputBinding": {"position": 0}}}, "outputs": {}},
        "inputs": {"s": "1"},
        "outputs": {},
        "container": {"engine": "docker", "settings": {
            "image": {"url": "img:1"}, "ram": 256,
            "gpus": {"vendor": "nvidia", "count": 1, "vram": 10000, "shared": True} if shared
            else {"vendor": "nvidia", "count": 1}}},
        "execution": {"engine": "ccagency", "settings": {"access": {"url": "http://127.0.0.1:1"}}},
    }


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


def test_second_agency_gpu_batch_waits_registered_for_the_only_gpu(tmp_path):
    runtime = FakeRuntime(lambda spec: Played(0, seconds=1.0))
    store, vault, dispatcher = _server(tmp_path, [Gpu("0", "GPU-only", 16000, "T4", "535.1")], runtime)
    ids = _submit(store, vault, _agency_red()) + _submit(store, vault, _agency_red())
    dispatcher.start()
    try:
        seen_together = False
        deadline = time.time() + 30
        while time.time() < deadline:
            states = [store.batch(i)["state"] for i in ids]
            if sum(s in ("scheduled", "processing") for s in states) > 1:
                seen_together = True
            if all(s in FINAL_STATES for s in states):
                break
            time.sleep(0.02)
        batches = _wait_final(store, ids)
    finally:
        dispatcher.stop()
    assert not seen_together  # the second stayed registered while the first held the GPU
    assert [b["state"] for b in batches] == ["succeeded", "succeeded"]
    spans = sorted((start, end) for _, start, end in runtime.history)
    assert len(spans) == 2 and spans[1][0] >= spans[0][1]  # the containers never overlapped
    assert {tuple(spec.gpu_ids) for spec in runtime.created} == {("GPU-only",)}


def test_shared_agency_batches_run_together_on_one_device(tmp_path):
    runtime = FakeRuntime(lambda spec: Played(0, seconds=1.5))
    store, vault, dispatcher = _server(tmp_path, [Gpu("0", "GPU-only", 24000, "A10", "535.1")], runtime)
    ids = [i for _ in range(3) for i in _submit(store, vault, _agency_red(shared=True))]
    dispatcher.start()
    try:
        batches = _wait_final(store, ids)
    finally:
        dispatcher.stop()
    assert [b["state"] for b in batches] == ["succeeded"] * 3
    spans = sorted((start, end) for _, start, end in runtime.history)
    assert spans[1][0] < spans[0][1]  # two 10 GB batches shared the 24 GB device ...
    assert spans[2][0] >= min(spans[0][1], spans[1][1])  # ... the third waited for one of them


def test_agency_batch_that_can_never_fit_fails_instead_of_waiting(tmp_path):
    runtime = FakeRuntime(lambda spec: Played(0, seconds=0.2))
    store, vault, dispatcher = _server(tmp_path, [Gpu("0", "GPU-only", 16000, "T4", "535.1")], runtime)
    too_big = _agency_red()
    too_big["container"]["settings"]["gpus"] = {"vendor": "nvidia", "count": 2}
    impossible = _submit(store, vault, too_big)
    fine = _submit(store, vault, _agency_red())
    dispatcher.start()
    try:
        batches = _wait_final(store, impossible + fine)
    finally:
        dispatcher.stop()
    assert [b["state"] for b in batches] == ["failed", "succeeded"]
    assert "cannot be satisfied on this agency: 2 GPU(s)" in str(batches[0]["history"][-1].get("debugInfo") or batches[0])


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


def test_batch_record_names_the_physical_device(tmp_path):
    red = sh_red(tmp_path / "r.json", "true", "img", gpus={"vendor": "nvidia", "count": 1, "vram": 8000, "shared": True},
                 sweep={"grid": {"n": [1, 2]}})
    runtime = FakeRuntime(lambda spec: Played(0, seconds=0.3))
    inventory = [Gpu("0", "GPU-busy", 24000, "A10", "550.54"), Gpu("1", "GPU-free", 24000, "A10", "550.54")]
    allocator = GpuAllocator(inventory, probe=lambda: {"GPU-busy": [GpuProcess(1)]})
    run = HostRun(load_experiment(str(red)), RunOptions(parallel=2), tmp_path / "run", host=Host(allocator, runtime))
    run.start()
    summary = run.wait()
    assert summary is not None and summary.exit_code == 0
    for spec in runtime.created:
        record = json.loads((tmp_path / "run" / "batches" / spec.batch_id / "result.json").read_text())
        assert record["gpus"] == [{"index": "1", "uuid": "GPU-free", "name": "A10", "vram": 24000,
                                   "driver": "550.54", "reserved": 8000}]
        assert spec.gpu_ids == ["GPU-free"]  # Docker gets the physical UUID, never the busy device
    assert len(runtime.created) == 2
