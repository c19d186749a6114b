"""A packed run's follower and the record of a committed batch (issue 20, review 1.11).

A worker commits a batch (claimed → done) and then publishes its record (one rename). A
shared file system that stalls between the two, or a suspended job, must not make the
follower declare the batch failed while its worker lives. The worker here is a real Slurm
job that stays RUNNING; the queue, the follower and the records are faice's own.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from slurm_helpers import wait_for

from faice.engines.slurm import packed as packed_module
from faice.engines.slurm.claims import ClaimQueue
from faice.engines.slurm.packed import PackedJob
from faice.pipeline.records import BatchState, new_batch_record
from faice.pipeline.rundir import RunDir

pytestmark = [pytest.mark.slurm]


def _sbatch_sleeper(slurm, workdir: Path) -> str:
    done = subprocess.run(["sbatch", "--parsable", f"--partition={slurm.partition}", "--array=0",
                           f"--chdir={workdir}", f"--output={workdir}/sleeper-%A_%a.out", "--job-name=faice-test-worker",
                           "--wrap", "sleep 120"], capture_output=True, text=True, timeout=60, check=True)
    return done.stdout.strip().split(";")[0]


def _running(job_id: str) -> bool:
    out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True, timeout=30)
    return "RUNNING" in out.stdout


def test_a_committed_batch_waits_for_its_live_worker_to_publish(slurm, tmp_path, monkeypatch):
    monkeypatch.setattr(packed_module, "RECORD_GRACE_S", 0.5)  # the stall below lasts 6x the grace
    job_id = _sbatch_sleeper(slurm, tmp_path)
    try:
        wait_for(lambda: _running(job_id), 60, "the worker job did not start")
        ids = ["b-aaaaaaaaaaaa", "b-bbbbbbbbbbbb"]
        entry = {"tag": "1", "jobId": job_id, "runId": "r1", "batchIds": ids,
                 "batchIndex": {b: i for i, b in enumerate(ids)}, "batchParameters": {b: {} for b in ids},
                 "packed": {"workers": 1, "pollInterval": 0.2}}
        job = PackedJob(tmp_path, entry)
        queue = ClaimQueue(job.submission_dir / "queue")
        queue.create(2)
        for _ in ids:
            claim = queue.claim()
            assert claim is not None and queue.commit(claim)  # committed; no record published yet
        end = time.monotonic() + 3.0
        while time.monotonic() < end:
            assert job.poll() == {ids[0]: BatchState.RUNNING, ids[1]: BatchState.RUNNING}
            time.sleep(0.2)
        assert RunDir(tmp_path).read_record(ids[0]) is None, "no failure record while the worker lives"
        # the worker publishes: the real record is what the follower reports
        RunDir(tmp_path).write_record(new_batch_record(ids[0], 0, {}, run_id="r1", command=["true"],
                                                      state=BatchState.SUCCEEDED))
        assert job.poll()[ids[0]] == BatchState.SUCCEEDED
    finally:
        subprocess.run(["scancel", job_id], timeout=30)
    # the worker is gone without publishing the other batch: now it is lost
    states = wait_for(lambda: (s := job.poll())[ids[1]] == BatchState.FAILED and s, 60,
                      "the batch of the dead worker was never recorded failed")
    assert states[ids[0]] == BatchState.SUCCEEDED
    lost = RunDir(tmp_path).read_record(ids[1])
    assert lost is not None and "ended the batch without a record" in (lost.message or "")
