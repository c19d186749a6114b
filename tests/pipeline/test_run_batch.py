"""run_batch on its own, with a fake container runtime (no dockerd; see fake_runtime.py).

What a user relies on whichever engine runs the batch: the record's state and failure class,
the streams, outputs, retries of transient runtime errors, cancellation, and that the GPU a
batch holds goes back to the allocator."""

from __future__ import annotations

import json
import threading
import time

import pytest
from engine_helpers import sh_red
from fake_runtime import FakeRuntime, Played, outputs_dir

from faice.connectors.staging import StagingSession
from faice.pipeline.batch import BatchContext, run_batch
from faice.pipeline.options import RunOptions
from faice.pipeline.plan import plan_batches
from faice.red.prepare import load_experiment
from faice.runtime.containers import ContainerError
from faice.runtime.gpus import Gpu, GpuAllocator
from faice.secrets import Redactor

FILE_OUT = {"result": {"type": "File", "outputBinding": {"glob": "result.txt"}}}
ONE_GPU = [Gpu(index="0", uuid="GPU-0", name="fake", vram=16000)]


def plan_of(tmp_path, *, outputs=None, gpus=None):
    red = sh_red(tmp_path / "r.json", "true", "img:1", outputs=outputs, gpus=gpus)
    (plan,) = plan_batches(load_experiment(str(red)))
    return plan


def context(tmp_path, runtime, *, gpus=None, options=None, redactor=None, cancel=None):
    staging = StagingSession(tmp_path / "staging")
    image, _ = runtime.ensure_image("img:1")
    return BatchContext(run_id="run1", outdir=tmp_path / "run", scratch=tmp_path / "scratch", runtime=runtime,
                        image=image, gpus=gpus or GpuAllocator([]), staging=staging,
                        redactor=redactor or Redactor(), options=options or RunOptions(),
                        cancel=cancel or threading.Event())


def read_record(tmp_path, plan) -> dict:
    return json.loads((tmp_path / "run" / "batches" / plan.id / "result.json").read_text())


def test_success_returns_the_record_it_wrote_with_streams_and_outputs(tmp_path):
    def command(spec):
        (outputs_dir(spec) / "result.txt").write_text("42\n")
        return Played(0, b"hello\n", b"warn\n")

    plan = plan_of(tmp_path, outputs=FILE_OUT)
    record = run_batch(plan, context(tmp_path, FakeRuntime(command)))
    assert record.state == "succeeded" and record.failure_class is None
    assert read_record(tmp_path, plan) == record.to_dict()
    assert record.process == {"returnCode": 0, "executed": True, "stdout": "stdout.txt", "stderr": "stderr.txt"}
    assert record.outputs["result"]["path"] == "/cc/outputs/result.txt"
    batch_dir = tmp_path / "run" / "batches" / plan.id
    assert (batch_dir / "stdout.txt").read_bytes() == b"hello\n"
    assert (batch_dir / "stderr.txt").read_bytes() == b"warn\n"


@pytest.mark.parametrize(("played", "failure", "message"), [
    (Played(3, stderr=b"boom\n"), "exit-code", "exited with code 3"),
    (Played(137, oom=True), "oom", "out of memory"),
    (Played(0), "missing-output", "result"),
])
def test_failures_get_their_class_and_reason(tmp_path, played, failure, message):
    plan = plan_of(tmp_path, outputs=FILE_OUT)
    record = run_batch(plan, context(tmp_path, FakeRuntime(lambda spec: played)))
    assert (record.state, str(record.failure_class)) == ("failed", failure)
    assert message in record.message
    assert record.debug_info[0].startswith(f"[{failure}]")


def test_transient_runtime_errors_are_retried_only_as_often_as_asked(tmp_path):
    plan = plan_of(tmp_path)
    flaky = FakeRuntime(fail_create=[ContainerError("Docker: 503 unavailable", transient=True)])
    record = run_batch(plan, context(tmp_path, flaky, options=RunOptions(retries=1)))
    assert record.state == "succeeded" and record.attempts == 2
    assert record.retried_after == ["[engine] Docker: 503 unavailable"]

    stubborn = FakeRuntime(fail_create=[ContainerError("Docker: bad mount", transient=False)])
    record = run_batch(plan, context(tmp_path, stubborn, options=RunOptions(retries=3)))
    assert (record.state, str(record.failure_class), record.attempts) == ("failed", "engine", 1)


def test_cancel_while_running_stops_the_container_and_keeps_its_logs(tmp_path):
    plan = plan_of(tmp_path)
    runtime = FakeRuntime(lambda spec: Played(0, b"step 1\n", seconds=30))
    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()
    started = time.monotonic()
    record = run_batch(plan, context(tmp_path, runtime, cancel=cancel))
    assert time.monotonic() - started < 5
    assert (record.state, str(record.failure_class)) == ("cancelled", "cancelled")
    assert (tmp_path / "run" / "batches" / plan.id / "stdout.txt").read_bytes() == b"step 1\n"


def test_a_batch_gives_its_gpu_back_whatever_happens(tmp_path):
    gpus = GpuAllocator(ONE_GPU)
    plan = plan_of(tmp_path, gpus={"vendor": "nvidia", "count": 1})
    runtime = FakeRuntime(lambda spec: Played(1))
    record = run_batch(plan, context(tmp_path, runtime, gpus=gpus))
    assert record.state == "failed" and record.gpus[0]["uuid"] == "GPU-0"
    assert runtime.created[0].gpu_ids == ["GPU-0"]
    assert gpus.try_acquire(plan.gpu_request) == ONE_GPU  # released again


def test_a_broken_output_stream_is_completed_from_the_whole_log_after_the_exit(tmp_path):
    """The attached stream breaks after its first chunk: stdout.txt and stderr.txt are still
    whole (fetched once more after the exit) and masked."""
    secret = "s3cr3t-value-Xy"
    out, err = f"first line\nsecond {secret} line\n".encode(), b"a warning\n"
    plan = plan_of(tmp_path)
    runtime = FakeRuntime(lambda spec: Played(0, out, err, attach_breaks=True))
    record = run_batch(plan, context(tmp_path, runtime, redactor=Redactor([secret])))
    batch_dir = tmp_path / "run" / "batches" / plan.id
    assert record.state == "succeeded"
    assert (batch_dir / "stdout.txt").read_bytes() == b"first line\nsecond ******** line\n"
    assert (batch_dir / "stderr.txt").read_bytes() == err


def test_the_batch_redactor_masks_its_own_secrets_in_streams_and_record(tmp_path):
    secret = "s3cr3t-value-Xy"
    plan = plan_of(tmp_path)
    runtime = FakeRuntime(lambda spec: Played(2, f"token {secret} ok\n".encode(), f"bad {secret}\n".encode()))
    record = run_batch(plan, context(tmp_path, runtime, redactor=Redactor([secret])))
    batch_dir = tmp_path / "run" / "batches" / plan.id
    for path in batch_dir.rglob("*"):
        if path.is_file():
            assert secret not in path.read_text(), path
    assert "********" in (batch_dir / "stdout.txt").read_text()
    assert record.state == "failed"
