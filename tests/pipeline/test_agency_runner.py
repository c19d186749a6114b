"""The agency server's runner on the batch pipeline, with a fake container runtime (no dockerd,
no GPU here; see fake_runtime.py): the server's one GPU allocator and per-batch redactors."""

from __future__ import annotations

import threading

from engine_helpers import sh_red
from fake_runtime import FakeRuntime, Played

from faice.agency.runner import BatchJob, PipelineRunner
from faice.pipeline.host import Host
from faice.red.load import load_mapping, to_plain
from faice.runtime.gpus import Gpu, GpuAllocator
from faice.secrets import REDACTOR


def job(tmp_path, name: str, *, gpus=None, password: str | None = None) -> BatchJob:
    red = to_plain(load_mapping(str(sh_red(tmp_path / f"{name}.json", "true", "img:1", gpus=gpus)), "RED").data)
    red.pop("execution")
    if password is not None:
        red["container"]["settings"]["image"]["auth"] = {"username": name, "password": password}
    return BatchJob(batch_id=f"b-{name}", experiment_id=f"e-{name}", index=0, attempt=1, red=red,
                    workdir=tmp_path / "work" / name, disable_connector_validation=True)


def test_two_agency_batches_never_share_the_one_gpu(tmp_path):
    runtime = FakeRuntime(lambda spec: Played(0, seconds=1.0))
    runner = PipelineRunner(Host(GpuAllocator([Gpu(index="0", uuid="GPU-0", name="fake", vram=8000)]), runtime))
    gpu = {"vendor": "nvidia", "count": 1}
    outcomes = {}

    def run(name: str) -> None:
        outcomes[name] = runner.run(job(tmp_path, name, gpus=gpu), threading.Event())

    threads = [threading.Thread(target=run, args=(name,)) for name in ("alice", "bob")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert {o.state for o in outcomes.values()} == {"succeeded"}
    assert [spec.gpu_ids for spec in runtime.created] == [["GPU-0"], ["GPU-0"]]
    (_, start_a, end_a), (_, start_b, end_b) = sorted(runtime.history, key=lambda h: h[1])
    assert start_b >= end_a, "the second batch ran while the first held the only GPU"
    waits = sorted(o.record["timings"].get("wait-gpu", 0) for o in outcomes.values())
    assert waits[1] > 0.5  # the second one waited for the GPU


def test_each_batch_is_masked_with_its_own_secrets_only(tmp_path):
    """A batch's logs are masked with its own secrets, never with another user's (that
    would tell a user which strings are somebody's password), and the process-wide redactor
    does not collect users' secrets."""
    alice_secret, bob_secret = "alice-pass-Qw7x", "bob-pass-Zr4k"
    runtime = FakeRuntime(lambda spec: Played(0, f"{alice_secret} {bob_secret}\n".encode()))
    runner = PipelineRunner(Host(GpuAllocator([]), runtime))
    before = REDACTOR.values()
    alice = runner.run(job(tmp_path, "alice", password=alice_secret), threading.Event())
    bob = runner.run(job(tmp_path, "bob", password=bob_secret), threading.Event())
    assert alice.stdout == f"******** {bob_secret}\n"
    assert bob.stdout == f"{alice_secret} ********\n"
    assert REDACTOR.values() == before
