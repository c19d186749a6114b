"""GPU inventory, restriction and exclusive allocation.

No GPU exists on the development machines, so these tests inject inventories (the only
mocked part); the last test hands a real device request to the real Docker engine and reads
it back from a created (never started) container.
"""

from __future__ import annotations

import random
import threading
import time

import pytest

from faice.errors import EngineError, UsageError
from faice.runtime.gpus import Gpu, GpuAllocator, GpuRequest, host_allocator, parse_nvidia_smi, restrict

MIXED = [
    Gpu("0", "GPU-aaa", 16000, "V100"),
    Gpu("1", "GPU-bbb", 40000, "A100"),
    Gpu("2", "GPU-ccc", 8000, "T4"),
    Gpu("3", "GPU-ddd", 80000, "H100"),
]


def test_nvidia_smi_output_is_parsed():
    text = "0, GPU-aaa, 16160, Tesla V100-SXM2-16GB\n1, GPU-bbb, 40536, NVIDIA A100-PCIE-40GB\n"
    assert parse_nvidia_smi(text) == [
        Gpu("0", "GPU-aaa", 16160, "Tesla V100-SXM2-16GB"),
        Gpu("1", "GPU-bbb", 40536, "NVIDIA A100-PCIE-40GB"),
    ]


def test_request_from_red_settings():
    assert GpuRequest.from_settings({"vendor": "nvidia", "count": 2}).vram_min == (0, 0)
    assert GpuRequest.from_settings({"vendor": "nvidia", "devices": [{"vramMin": 20000}, {}]}).vram_min == (20000, 0)
    assert GpuRequest.from_settings(None).count == 0


def test_twenty_concurrent_batches_never_share_a_gpu():
    allocator = GpuAllocator(MIXED)
    request = GpuRequest((10000,))  # fits 0, 1, 3 but never the 8 GB T4
    holding: dict[str, str] = {}
    errors: list[str] = []
    lock = threading.Lock()
    used = set()

    def batch(name: str) -> None:
        gpus = allocator.acquire(request)
        with lock:
            for gpu in gpus:
                if gpu.uuid in holding:
                    errors.append(f"{gpu.uuid} given to {name} while {holding[gpu.uuid]} holds it")
                holding[gpu.uuid] = name
                used.add(gpu.index)
        time.sleep(random.uniform(0.001, 0.02))
        with lock:
            for gpu in gpus:
                del holding[gpu.uuid]
        allocator.release(gpus)

    threads = [threading.Thread(target=batch, args=(f"b{i}",)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert not errors
    assert used <= {"0", "1", "3"} and "2" not in used
    assert allocator.max_concurrent(request) == 3


def test_vram_requests_take_the_smallest_device_that_fits():
    allocator = GpuAllocator(MIXED)
    big = allocator.try_acquire(GpuRequest((60000,)))
    assert [g.index for g in big] == ["3"]
    pair = allocator.try_acquire(GpuRequest((30000, 0)))
    assert sorted(g.index for g in pair) == ["1", "2"]  # the any-size one gets the smallest free device
    assert allocator.try_acquire(GpuRequest((30000,))) is None  # the 40 GB device is taken: wait


def test_gpu_ids_restrict_but_never_over_allocate():
    allocator = GpuAllocator(restrict(MIXED, gpu_ids=["1", "3"]))
    first = allocator.try_acquire(GpuRequest((0,)))
    second = allocator.try_acquire(GpuRequest((0,)))
    assert len(first) == 1 and len(second) == 1  # one each, not all listed devices (upstream flaw)
    assert {first[0].index, second[0].index} == {"1", "3"}
    assert allocator.try_acquire(GpuRequest((0,))) is None


def test_unknown_gpu_id_is_a_usage_error():
    with pytest.raises(UsageError, match="--gpu-ids: no GPU 7"):
        restrict(MIXED, gpu_ids=["7"])


def test_cuda_visible_devices_is_an_outer_allocation(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-ccc,3")
    allocator = host_allocator(None, inventory=MIXED)
    assert [g.index for g in allocator.gpus] == ["2", "3"]
    with pytest.raises(UsageError):
        host_allocator("0", inventory=MIXED)  # 0 is outside the outer allocation


def test_impossible_request_fails_before_anything_runs():
    with pytest.raises(EngineError, match="cannot be satisfied: 2 GPU"):
        GpuAllocator(MIXED[:1]).check(GpuRequest((0, 0)))
    with pytest.raises(EngineError, match="≥100000 MiB"):
        GpuAllocator(MIXED).check(GpuRequest((100000,)))
    with pytest.raises(EngineError, match="available: none"):
        GpuAllocator([]).check(GpuRequest((0,)))


def test_engine_rejects_an_impossible_gpu_request_before_docker(tmp_path):
    from engine_helpers import sh_red

    from faice.pipeline.options import RunOptions
    from faice.pipeline.run import HostRun
    from faice.red.prepare import load_experiment

    red = sh_red(tmp_path / "r.json", "true", "faice-test/base:bookworm", gpus={"vendor": "nvidia", "count": 3})
    local = HostRun(load_experiment(str(red)), RunOptions(), tmp_path / "run", gpu_inventory=MIXED[:2])
    with pytest.raises(EngineError, match="cannot be satisfied"):
        local.start().wait()
    assert local.runtime is None  # failed before even connecting to Docker


def test_dry_run_plan_shows_distinct_gpus_per_concurrent_batch(tmp_path):
    from engine_helpers import sh_red

    from faice.pipeline.options import RunOptions
    from faice.pipeline.run import HostRun
    from faice.red.prepare import load_experiment

    red = sh_red(tmp_path / "r.json", "true", "img", gpus={"vendor": "nvidia", "count": 1},
                 sweep={"grid": {"n": [1, 2, 3, 4]}})
    plan = HostRun(load_experiment(str(red)), RunOptions(), tmp_path / "run", gpu_inventory=MIXED[:2]).plan()
    assert plan["parallel"] == 2  # two GPUs, one per batch
    assert [b["gpus"] for b in plan["batches"]] == [["0"], ["1"], ["0"], ["1"]]


@pytest.mark.docker
def test_device_request_reaches_the_docker_engine(docker_client, test_image):
    from faice.runtime.containers import ContainerSpec
    from faice.runtime.docker import create_kwargs

    spec = ContainerSpec(image=test_image, command=["true"], run_id="gputest", batch_id="b-gpu",
                         gpu_ids=["GPU-aaa", "GPU-ccc"], environment={"NVIDIA_VISIBLE_DEVICES": "GPU-aaa,GPU-ccc"})
    kwargs = create_kwargs(docker_client.api, spec)
    kwargs["labels"]["org.faice.test"] = "1"
    created = docker_client.api.create_container(**kwargs)  # created, never started: no GPU here
    container = docker_client.containers.get(created["Id"])
    try:
        requests = container.attrs["HostConfig"]["DeviceRequests"]
        assert requests == [{"Driver": "nvidia", "Count": 0, "DeviceIDs": ["GPU-aaa", "GPU-ccc"],
                             "Capabilities": [["gpu"]], "Options": {}}]
        assert container.labels["org.faice.run"] == "gputest"
    finally:
        container.remove(force=True)
