"""GPU placement that sees the machine: busy devices, VRAM packing, outer allocations, the
simulated inventory and the dry-run plan.

No GPU exists on the development machines: inventories and the devices' running processes
are injected (``FAICE_GPU_INVENTORY``, or a probe function); the batch-record test uses the
fake container runtime of ``tests/support/fake_runtime.py`` because Docker cannot start a container
with an nvidia device request here. Everything else is faice's real code.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time

import pytest

from faice.errors import EngineError, UsageError
from faice.runtime import gpus as gpus_module
from faice.runtime.gpus import (
    Gpu,
    GpuAllocator,
    GpuProcess,
    GpuRequest,
    detect_gpus,
    device_processes,
    host_allocator,
    parse_compute_apps,
    parse_nvidia_smi,
    restrict,
)

TWO = [Gpu("0", "GPU-aaa", 24000, "A10", "550.54"), Gpu("1", "GPU-bbb", 24000, "A10", "550.54")]


def probe_of(processes: dict[str, list[GpuProcess]]):
    return lambda: processes


# ----------------------------------------------------------------------------- busy devices


def test_device_with_a_foreign_process_is_skipped():
    allocator = GpuAllocator(TWO, probe=probe_of({"GPU-aaa": [GpuProcess(4242, 900)]}))
    placed = allocator.try_acquire(GpuRequest((0,)))
    assert [g.index for g in placed] == ["1"]
    assert allocator.try_acquire(GpuRequest((0,))) is None  # 0 is someone else's: wait, never share
    assert allocator.max_concurrent(GpuRequest((0,))) == 1


def test_gpu_busy_ignore_uses_busy_devices():
    allocator = GpuAllocator(TWO, probe=probe_of({"GPU-aaa": [GpuProcess(4242)]}), busy="ignore")
    assert [g.index for g in allocator.try_acquire(GpuRequest((0,)))] == ["0"]


def test_skip_fails_before_running_when_only_busy_devices_fit():
    busy_all = probe_of({"GPU-aaa": [GpuProcess(1)], "GPU-bbb": [GpuProcess(2)]})
    with pytest.raises(EngineError, match="busy with processes faice did not start") as info:
        GpuAllocator(TWO, probe=busy_all).check(GpuRequest((0,)))
    assert "--gpu-busy wait" in (info.value.hint or "")
    GpuAllocator(TWO, probe=busy_all, busy="wait").check(GpuRequest((0,)))  # wait: no error


def test_gpu_busy_wait_waits_until_the_foreign_process_ends(monkeypatch):
    monkeypatch.setattr(gpus_module, "PROBE_INTERVAL", 0.1)
    processes = {"GPU-aaa": [GpuProcess(4242)]}
    allocator = GpuAllocator(TWO[:1], probe=probe_of(processes), busy="wait")
    got: list = []
    waiter = threading.Thread(target=lambda: got.append(allocator.acquire(GpuRequest((0,)))))
    waiter.start()
    time.sleep(0.5)
    assert not got  # still waiting for the other user's process
    processes.clear()
    waiter.join(5)
    assert [g.index for g in got[0]] == ["0"]


def test_processes_on_a_device_faice_holds_are_its_own():
    processes: dict[str, list[GpuProcess]] = {}
    allocator = GpuAllocator(TWO[:1], probe=probe_of(processes))
    first = allocator.try_acquire(GpuRequest((8000,), shared=True))
    processes["GPU-aaa"] = [GpuProcess(777, 8000)]  # the first batch's container now runs there
    second = allocator.try_acquire(GpuRequest((8000,), shared=True))
    assert first and second and first[0].uuid == second[0].uuid
    allocator.release(first)
    allocator.release(second)
    # nothing of faice's left there, the process is someone else's now
    assert allocator.try_acquire(GpuRequest((8000,), shared=True)) is None


def test_nvidia_smi_compute_apps_are_parsed():
    text = "GPU-aaa, 1234, 512\nGPU-aaa, 99, [N/A]\nGPU-bbb, 7, 100\n"
    assert parse_compute_apps(text) == {"GPU-aaa": [GpuProcess(1234, 512), GpuProcess(99, 0)],
                                        "GPU-bbb": [GpuProcess(7, 100)]}
    assert parse_nvidia_smi("0, GPU-aaa, 16160, Tesla V100-SXM2-16GB, 550.54.15\n") == [
        Gpu("0", "GPU-aaa", 16160, "Tesla V100-SXM2-16GB", "550.54.15")]


# ----------------------------------------------------------------------------- VRAM packing


def test_shared_batches_pack_by_vram():
    allocator = GpuAllocator(TWO)
    request = GpuRequest((8000,), shared=True)
    assert allocator.max_concurrent(request) == 6  # 3 per 24 GB device
    placed = [allocator.try_acquire(request) for _ in range(6)]
    assert [p[0].index for p in placed] == ["0", "0", "0", "1", "1", "1"]  # fill one device first
    assert allocator.try_acquire(request) is None
    assert allocator.reserved(placed[0]) == [8000]


def test_packing_counts_memory_other_processes_use_on_a_shared_device():
    # No GPU here: the devices' processes are injected. Batch A shares device 0; then another
    # user's process takes 20,000 MiB there. Batch B must go to the idle device 1 instead of
    # needing 8,000 + 20,000 + 8,000 MiB of device 0's 24,000.
    processes: dict[str, list[GpuProcess]] = {}
    allocator = GpuAllocator(TWO, probe=probe_of(processes))
    request = GpuRequest((8000,), shared=True)
    first = allocator.try_acquire(request)
    assert [g.index for g in first] == ["0"]
    processes["GPU-aaa"] = [GpuProcess(4242, 20000)]
    assert [g.index for g in allocator.try_acquire(request)] == ["1"]
    processes["GPU-bbb"] = [GpuProcess(4343, 17000)]  # device 1 gets its own guest: 8,000 reserved
    assert allocator.try_acquire(request) is None  # 24,000 - 17,000 < 8,000 on 1; 4,000 free on 0


@pytest.mark.docker
def test_packing_tells_its_own_containers_processes_from_others(docker_client, test_image):
    """With the pipeline's Host, the GPU processes of faice's own containers (a real one
    here, found by its cgroup) are counted at their batch's reservation and everyone else's
    at what they use: a batch that uses less than it reserved leaves no room for others'
    memory to hide in. (No GPU: the device's process list is injected, the pid is real.)"""
    import uuid

    from faice.pipeline.host import Host
    from faice.runtime.containers import ContainerSpec
    from faice.runtime.docker import DockerRuntime

    runtime = DockerRuntime(docker_client)
    handle = runtime.create(ContainerSpec(image=test_image, command=["sleep", "60"], run_id=f"gpu-{uuid.uuid4().hex[:8]}",
                                          batch_id="b-gpu-own"))
    try:
        runtime.start(handle)
        pid = docker_client.api.inspect_container(handle.id)["State"]["Pid"]
        assert runtime.owns_process(pid) and not runtime.owns_process(os.getpid())
        processes: dict[str, list[GpuProcess]] = {}
        allocator = GpuAllocator(TWO, probe=probe_of(processes))
        Host(allocator, runtime)
        first = allocator.try_acquire(GpuRequest((8000,), shared=True))
        assert [g.index for g in first] == ["0"]
        processes["GPU-aaa"] = [GpuProcess(pid, 2000)]  # the batch, below its reservation
        assert [g.index for g in allocator.try_acquire(GpuRequest((12000,), shared=True))] == ["0"]
        processes["GPU-aaa"].append(GpuProcess(4242, 3000))  # someone else's, beside it
        # device 0: 24,000 - 8,000 - 12,000 reserved - 3,000 used by 4242 = 1,000 free
        assert [g.index for g in allocator.try_acquire(GpuRequest((2000,), shared=True))] == ["1"]
    finally:
        runtime.kill(handle)
        runtime.remove(handle)


def test_exclusive_and_shared_batches_never_meet():
    allocator = GpuAllocator(TWO)
    shared = allocator.try_acquire(GpuRequest((4000,), shared=True))
    exclusive = allocator.try_acquire(GpuRequest((0,)))
    assert shared[0].uuid != exclusive[0].uuid
    assert allocator.try_acquire(GpuRequest((0,))) is None  # device 0 has a sharer: not whole
    assert allocator.try_acquire(GpuRequest((4000,), shared=True))[0].uuid == shared[0].uuid
    allocator.release(exclusive)
    assert allocator.try_acquire(GpuRequest((0,)))[0].uuid == exclusive[0].uuid


def test_thirty_concurrent_mixed_batches_never_over_commit():
    allocator = GpuAllocator(TWO)
    lock = threading.Lock()
    reserved = {g.uuid: 0 for g in TWO}
    exclusive: dict[str, int] = {g.uuid: 0 for g in TWO}
    errors: list[str] = []

    def batch(i: int) -> None:
        shared = i % 3 != 0
        request = GpuRequest((random.choice([3000, 7000, 11000]),), shared=True) if shared else GpuRequest((0,))
        gpus = allocator.acquire(request)
        with lock:
            for g in gpus:
                if shared:
                    reserved[g.uuid] += request.vram_min[0]
                else:
                    exclusive[g.uuid] += 1
                if reserved[g.uuid] > g.vram:
                    errors.append(f"{g.uuid} over-committed: {reserved[g.uuid]} MiB")
                if exclusive[g.uuid] and (reserved[g.uuid] or exclusive[g.uuid] > 1):
                    errors.append(f"{g.uuid} shared with an exclusive batch")
        time.sleep(random.uniform(0.001, 0.02))
        with lock:
            for g in gpus:
                if shared:
                    reserved[g.uuid] -= request.vram_min[0]
                else:
                    exclusive[g.uuid] -= 1
        allocator.release(gpus)

    threads = [threading.Thread(target=batch, args=(i,)) for i in range(30)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert not errors
    assert all(not t.is_alive() for t in threads)


def test_request_extension_from_red_settings():
    request = GpuRequest.from_settings({"vendor": "nvidia", "count": 1, "vram": 8000, "shared": True})
    assert request == GpuRequest((8000,), shared=True)
    with pytest.raises(UsageError, match="container.settings.gpus.vram"):
        GpuRequest.from_settings({"vendor": "nvidia", "count": 1, "shared": True})
    with pytest.raises(EngineError, match="cannot be satisfied: 1 GPU.*shared"):
        GpuAllocator(TWO).check(GpuRequest((30000,), shared=True))


def test_schema_accepts_the_extension_and_rejects_shared_without_vram(tmp_path):
    from engine_helpers import sh_red

    ok = sh_red(tmp_path / "ok.json", "true", "img", gpus={"vendor": "nvidia", "count": 1, "vram": 8000, "shared": True})
    bad = sh_red(tmp_path / "bad.json", "true", "img", gpus={"vendor": "nvidia", "count": 1, "shared": True})
    assert _faice("validate", str(ok)).returncode == 0
    done = _faice("validate", str(bad))
    assert done.returncode != 0 and "gpus" in done.stdout + done.stderr


# ----------------------------------------------------------------------------- inventories


def test_injected_inventory_json_and_file(tmp_path, monkeypatch):
    devices = [{"index": "0", "uuid": "GPU-x", "vram": 16000, "name": "T4", "driver": "535.1",
                "processes": [{"pid": 5, "usedMemory": 300}]}]
    monkeypatch.setenv("FAICE_GPU_INVENTORY", json.dumps(devices))
    assert detect_gpus() == [Gpu("0", "GPU-x", 16000, "T4", "535.1")]
    assert device_processes() == {"GPU-x": [GpuProcess(5, 300)]}
    inventory = tmp_path / "gpus.json"
    inventory.write_text(json.dumps(devices))
    monkeypatch.setenv("FAICE_GPU_INVENTORY", str(inventory))
    allocator = host_allocator(None)
    assert allocator.try_acquire(GpuRequest((0,))) is None  # busy
    devices[0]["processes"] = []
    inventory.write_text(json.dumps(devices))  # the process ended: the file is read again
    assert [g.uuid for g in allocator.try_acquire(GpuRequest((0,)))] == ["GPU-x"]
    monkeypatch.setenv("FAICE_GPU_INVENTORY", "[{]")
    with pytest.raises(UsageError, match="FAICE_GPU_INVENTORY: not JSON"):
        detect_gpus()


FOUR = [Gpu(str(i), f"GPU-{c * 8}", 16000) for i, c in enumerate("abcd")]


def test_outer_allocation_by_uuid_survives_renumbering():
    # CUDA_VISIBLE_DEVICES in the order the outer allocation gave, physical devices 3 and 1
    kept = restrict(FOUR, environ={"CUDA_VISIBLE_DEVICES": "GPU-dddddddd,GPU-bbbb"})  # a unique prefix
    assert [g.index for g in kept] == ["1", "3"]


def test_slurm_node_ids_win_over_renumbered_cuda_visible_devices():
    kept = restrict(FOUR, environ={"CUDA_VISIBLE_DEVICES": "0", "SLURM_JOB_GPUS": "2"})
    assert [g.uuid for g in kept] == ["GPU-cccccccc"]  # not physical device 0


def test_empty_cuda_visible_devices_means_no_gpu(monkeypatch):
    # CUDA reads CUDA_VISIBLE_DEVICES="" as "no device"; unset means every device.
    assert restrict(FOUR, environ={"CUDA_VISIBLE_DEVICES": ""}) == []
    assert restrict(FOUR, environ={"CUDA_VISIBLE_DEVICES": " "}) == []
    assert restrict(FOUR, environ={"CUDA_VISIBLE_DEVICES": "", "SLURM_JOB_GPUS": "2"}) == []
    assert restrict(FOUR, environ={}) == FOUR
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    allocator = host_allocator(None, inventory=FOUR)
    assert allocator.gpus == []
    with pytest.raises(EngineError, match="cannot be satisfied"):
        allocator.check(GpuRequest((0,)))


def test_cgroup_confined_inventory_is_all_ours():
    confined = FOUR[2:]  # NVML inside the job's cgroup sees only its two devices ...
    renamed = [Gpu(str(i), g.uuid, g.vram) for i, g in enumerate(confined)]  # ... numbered from 0
    kept = restrict(renamed, environ={"CUDA_VISIBLE_DEVICES": "0,1", "SLURM_JOB_GPUS": "2,3"})
    assert [g.uuid for g in kept] == ["GPU-cccccccc", "GPU-dddddddd"]


# ----------------------------------------------------------------------------- dry run and records


def _faice(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "faice", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def test_dry_run_shows_packing_and_busy_devices(tmp_path):
    from engine_helpers import sh_red

    red = sh_red(tmp_path / "r.json", "true", "img", gpus={"vendor": "nvidia", "count": 1, "vram": 10000, "shared": True},
                 sweep={"grid": {"n": [1, 2, 3, 4, 5]}})
    inventory = [{"index": "0", "uuid": "GPU-a", "vram": 24000, "name": "A10", "processes": [{"pid": 1}]},
                 {"index": "1", "uuid": "GPU-b", "vram": 24000, "name": "A10"},
                 {"index": "2", "uuid": "GPU-c", "vram": 24000, "name": "A10"}]
    done = _faice("exec", str(red), "--dry-run", "--json", env={"FAICE_GPU_INVENTORY": json.dumps(inventory)})
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    assert plan["parallel"] == 4  # two per free 24 GB device, the busy one skipped
    devices = {d["index"]: d for d in plan["gpuDevices"]}
    assert devices["0"]["busy"] and not devices["0"]["batches"]
    assert devices["1"]["reserved"] == 20000 and len(devices["1"]["batches"]) == 2
    assert [b["gpus"] for b in plan["batches"]][:4] == [["1"], ["1"], ["2"], ["2"]]
    text = _faice("exec", str(red), "--dry-run", env={"FAICE_GPU_INVENTORY": json.dumps(inventory)}).stdout
    assert "GPU 0 A10: busy" in text and "GPU 1 A10: 20000/24000 MiB reserved" in text


def test_dry_run_without_gpus_still_shows_the_plan(tmp_path):
    from engine_helpers import sh_red

    red = sh_red(tmp_path / "r.json", "true", "img", gpus={"vendor": "nvidia", "count": 1})
    done = _faice("exec", str(red), "--dry-run", "--json", env={"FAICE_GPU_INVENTORY": "[]"})
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    assert plan["gpuNote"].startswith("not placeable here") and len(plan["batches"]) == 1
    text = _faice("exec", str(red), "--dry-run", env={"FAICE_GPU_INVENTORY": "[]"}).stdout
    assert "GPUs: not placeable here" in text


def test_nvml_api_faice_calls_exists_and_no_driver_means_no_gpus(monkeypatch, optional_extra):
    pynvml = optional_extra("pynvml", "gpu")
    for name in ("nvmlInit", "nvmlShutdown", "nvmlSystemGetDriverVersion", "nvmlDeviceGetCount",
                 "nvmlDeviceGetHandleByIndex", "nvmlDeviceGetUUID", "nvmlDeviceGetName",
                 "nvmlDeviceGetMemoryInfo", "nvmlDeviceGetComputeRunningProcesses"):
        assert callable(getattr(pynvml, name)), name
    monkeypatch.delenv("FAICE_GPU_INVENTORY", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")  # no nvidia-smi to fall back to either
    assert detect_gpus() == [] and device_processes() == {}


def test_gpu_busy_flag_reaches_the_placement(tmp_path):
    from engine_helpers import sh_red

    red = sh_red(tmp_path / "r.json", "true", "img", gpus={"vendor": "nvidia", "count": 1})
    busy = json.dumps([{"index": "0", "uuid": "GPU-a", "vram": 16000, "name": "T4", "processes": [{"pid": 9}]}])
    plan = json.loads(_faice("exec", str(red), "--dry-run", "--json", env={"FAICE_GPU_INVENTORY": busy}).stdout)
    assert "busy with processes faice did not start (0)" in plan["gpuNote"] and plan["batches"][0]["gpus"] == []
    ignored = _faice("exec", str(red), "--dry-run", "--json", "--gpu-busy", "ignore", env={"FAICE_GPU_INVENTORY": busy})
    plan = json.loads(ignored.stdout)
    assert plan["gpuNote"] is None and plan["batches"][0]["gpus"] == ["0"]
    bad = _faice("exec", str(red), "--dry-run", "--gpu-busy", "sometimes")
    assert bad.returncode == 2 and "--gpu-busy" in bad.stderr
