"""The Slurm command layer and the run-directory protocol against the real single-node cluster."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from slurm_helpers import wait_for

from faice.engines.slurm import client as slurm_cli
from faice.engines.slurm import job as engine
from faice.pipeline.options import RunOptions
from faice.red.experiment import Batch, Experiment

pytestmark = pytest.mark.slurm



def test_array_task_states_and_exit_codes(slurm, tmp_path):
    script = tmp_path / "job.sh"
    script.write_text('#!/bin/sh\necho "task $SLURM_ARRAY_TASK_ID"\n[ "$SLURM_ARRAY_TASK_ID" = 1 ] && exit 3\nexit 0\n')
    job_id = slurm_cli.sbatch(str(script), [
        f"--partition={slurm.partition}", "--array=0-2", "--mem=64M",
        f"--output={tmp_path}/slurm-%A_%a.out", f"--chdir={tmp_path}",
    ])
    states = wait_for(lambda: (s := slurm_cli.task_states(job_id)) and len(s) == 3 and all(t.is_final for t in s.values()) and s)
    assert states[0].state == "COMPLETED" and states[0].exit_code == 0
    assert states[1].state == "FAILED" and states[1].exit_code == 3
    assert states[2].state == "COMPLETED"
    assert (tmp_path / f"slurm-{job_id}_1.out").read_text().strip() == "task 1"


def test_scancel_stops_running_and_pending_tasks(slurm, tmp_path):
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/sh\nsleep 60\n")
    job_id = slurm_cli.sbatch(str(script), [
        f"--partition={slurm.partition}", "--array=0-2%1", "--mem=64M", f"--output={tmp_path}/%a.out",
    ])
    wait_for(lambda: any(t.is_running for t in slurm_cli.queued_tasks(job_id).values()))
    assert any(not t.is_running for t in slurm_cli.queued_tasks(job_id).values())  # %1 keeps the others pending
    slurm_cli.scancel(job_id)
    wait_for(lambda: not slurm_cli.queued_tasks(job_id), timeout=20)
    assert {t.state for t in slurm_cli.task_states(job_id).values()} == {"CANCELLED"}


def _experiment(settings: dict, count: int) -> Experiment:
    data = {
        "redVersion": "9",
        "cli": {"cwlVersion": "v1.0", "class": "CommandLineTool", "baseCommand": "true", "inputs": {}, "outputs": {}},
        "container": {"engine": "docker", "settings": {"image": {"url": "faice-test/base:bookworm"}, "ram": 256}},
        "execution": {"engine": "slurm", "settings": settings},
        "batches": [{"inputs": {}, "outputs": {}} for _ in range(count)],
    }
    batches = [Batch(index=i, id=f"b-test{i:08d}", inputs={}, outputs={}, parameters={"i": i}) for i in range(count)]
    return Experiment("lost.red.yml", data, batches)


def test_task_that_cannot_start_faice_is_failed_with_its_output(slurm, tmp_path):
    """A node without faice (wrong ``python`` setting) fails each batch with the task's output
    as its stderr, and no secret-bearing task spec is left in the run directory."""
    experiment = _experiment({"partition": slurm.partition, "python": "/nonexistent/faice-python"}, 2)
    outdir = tmp_path / "run"
    job = slurm_submit(experiment, outdir)
    states = engine.watch([job], interval=0.2)
    assert states == {"b-test00000000": "failed", "b-test00000001": "failed"}
    record = json.loads((outdir / "batches" / "b-test00000001" / "result.json").read_text())
    assert record["failureClass"] == "engine" and record["parameters"] == {"i": 1}
    assert "nonexistent/faice-python" in (outdir / "batches" / "b-test00000001" / "stderr.txt").read_text()
    assert not list((outdir / "slurm" / job.tag / "tasks").iterdir())
    summary = engine.refresh_run(outdir)
    assert summary["state"] == "failed" and summary["counts"] == {"failed": 2}
    assert summary["slurm"]["jobIds"] == [job.job_id]


def slurm_submit(experiment, outdir: Path):
    outdir.mkdir(parents=True, exist_ok=True)
    return engine.submit_batches(experiment, RunOptions(), outdir)


def test_task_specs_are_private_and_cancel_of_pending_batches_removes_them(slurm, tmp_path):
    # batchConcurrencyLimit=1 and a "python" that just sleeps: one task runs, the others stay pending.
    slow = tmp_path / "slow-python"
    slow.write_text("#!/bin/sh\nsleep 30\n")
    slow.chmod(0o755)
    experiment = _experiment({"partition": slurm.partition, "batchConcurrencyLimit": 1, "python": str(slow)}, 3)
    outdir = tmp_path / "run"
    job = slurm_submit(experiment, outdir)
    tasks = outdir / "slurm" / job.tag / "tasks"
    pending = wait_for(lambda: [p for p in tasks.iterdir()] if len(list(tasks.iterdir())) >= 2 else None)
    assert all(os.stat(p).st_mode & 0o777 == 0o600 for p in pending)
    assert os.stat(outdir / "slurm").st_mode & 0o777 == 0o700
    cancelled = engine.cancel_run(outdir)
    assert sorted(cancelled) == sorted(job.batch_ids)
    states = engine.watch([job], interval=0.2)
    assert set(states.values()) == {"cancelled"}
    assert not list(tasks.iterdir())
    assert not slurm_cli.queued_tasks(job.job_id)
