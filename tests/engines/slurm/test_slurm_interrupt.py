"""Ctrl-C (SIGINT) and SIGTERM while ``faice exec --wait`` follows a Slurm job array: the
array is cancelled, its containers are gone and run.json says cancelled — against the real
single-node Slurm cluster and Docker engine."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import docker_helpers
import pytest
from slurm_helpers import wait_for, write_sweep_red

from faice.engines.slurm import client as slurm_cli

pytestmark = [pytest.mark.slurm, pytest.mark.docker]

def running_containers(docker_client, run_id: str) -> list:
    return docker_helpers.labelled_containers(docker_client, f"org.faice.run={run_id}")


@pytest.mark.parametrize(("signum", "exit_code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_interrupting_exec_wait_cancels_the_array(slurm, test_image, docker_client, tmp_path, signum, exit_code):
    red = write_sweep_red(tmp_path, test_image, [1, 2], "sleep 30; echo $(sweep.n)", {"partition": slurm.partition})
    outdir = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "faice", "exec", str(red), "--outdir", str(outdir), "--wait", "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
        env={**os.environ, "NO_COLOR": "1"},
    )
    try:
        submissions = outdir / "slurm" / "submissions.json"
        wait_for(submissions.exists, 60, "faice exec did not submit")
        job_id = json.loads(submissions.read_text())[0]["jobId"]
        run_id = json.loads(submissions.read_text())[0]["runId"]
        wait_for(lambda: len([c for c in running_containers(docker_client, run_id) if c.status == "running"]) == 2,
                 60, "the two batch containers did not start")

        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()

    assert proc.returncode == exit_code, stderr
    assert f"cancelling Slurm job array {job_id}" in stderr
    assert "Traceback" not in stderr
    wait_for(lambda: not slurm_cli.queued_tasks(job_id), 20, f"Slurm job {job_id} is still queued")
    wait_for(lambda: not running_containers(docker_client, run_id), 20, "batch containers were left behind")
    run = json.loads((outdir / "run.json").read_text())
    assert [b["state"] for b in run["batches"]] == ["cancelled", "cancelled"]
    assert run["state"] == "cancelled"
    assert not list((outdir / "slurm" / "1" / "tasks").iterdir())
