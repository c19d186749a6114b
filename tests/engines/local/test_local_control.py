"""A local run followed and cancelled from another terminal, as docs/cli.md documents:
``faice status --outdir DIR --wait``, ``faice list --outdir DIR``, ``faice cancel RUN --outdir DIR``."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from engine_helpers import faice_containers, sh_red
from test_local_cleanup import faice, running_run, wait_for

pytestmark = pytest.mark.docker


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "faice", *args], capture_output=True, text=True, timeout=180,
                          stdin=subprocess.DEVNULL)


def test_wait_list_and_cancel_a_running_local_run(tmp_path, docker_client, test_image):
    red = sh_red(tmp_path / "r.json", "sleep 120", test_image, sweep={"grid": {"n": [1, 2, 3]}})
    outdir = tmp_path / "run"
    proc = faice("exec", str(red), "--outdir", str(outdir), "--parallel", "2", "--no-progress")
    waiter = None
    try:
        run_id = wait_for(running_run(docker_client, outdir, 2), 60)
        assert run_id, proc.stderr.read() if proc.poll() is not None else "no running containers"

        waiter = faice("status", "--outdir", str(outdir), "--wait")
        time.sleep(2)
        assert waiter.poll() is None, "status --wait returned while the run was still going"

        listed = cli("list", "--outdir", str(outdir))
        assert listed.returncode == 0, listed.stderr
        rows = [line.split() for line in listed.stdout.splitlines()]
        assert sorted(row[2] for row in rows) == ["pending", "running", "running"]
        assert sorted(row[3] for row in rows) == ["n=1", "n=2", "n=3"]
        as_json = json.loads(cli("list", "--outdir", str(outdir), "--json").stdout)
        assert len(as_json) == 3

        batch = rows[0][1]
        one = cli("cancel", batch, "--outdir", str(outdir))
        assert one.returncode == 2 and "cancelled as a whole" in one.stderr

        started = time.monotonic()
        cancel = cli("cancel", run_id, "--outdir", str(outdir))
        assert cancel.returncode == 0, cancel.stderr
        assert "3 batches cancelled" in cancel.stderr
        assert time.monotonic() - started < 60
        assert proc.wait(timeout=30) == 143
        assert not faice_containers(docker_client, run_id)

        out, err = waiter.communicate(timeout=30)
        assert waiter.returncode == 1, err  # a cancelled run
        assert out.startswith(f"run {run_id}: cancelled")
        assert json.loads((outdir / "run.json").read_text())["counts"] == {"cancelled": 3}

        again = cli("cancel", run_id, "--outdir", str(outdir))
        assert again.returncode == 0 and "nothing to cancel" in again.stderr
    finally:
        for process in (proc, waiter):
            if process is not None and process.poll() is None:
                process.kill()


def test_wait_on_a_run_whose_faice_died_reports_it_interrupted(tmp_path, docker_client, test_image):
    red = sh_red(tmp_path / "r.json", "sleep 120", test_image)
    outdir = tmp_path / "run"
    proc = faice("exec", str(red), "--outdir", str(outdir), "--no-progress")
    run_id = None
    try:
        run_id = wait_for(running_run(docker_client, outdir, 1), 60)
        assert run_id
        proc.kill()
        proc.wait(timeout=30)
        done = cli("status", "--outdir", str(outdir), "--wait")
        assert done.returncode == 1, done.stderr
        assert done.stdout.startswith(f"run {run_id}: interrupted")
    finally:
        if proc.poll() is None:
            proc.kill()
        for container in faice_containers(docker_client, run_id or "none"):  # SIGKILL left it
            docker_client.api.remove_container(container["Id"], force=True)


def test_a_finished_run_its_batches_logs_and_resume(tmp_path, test_image):
    red = sh_red(tmp_path / "r.json", "echo $0; test $0 -ne 2", test_image, sweep={"grid": {"n": [1, 2]}})
    outdir = tmp_path / "run"
    assert cli("exec", str(red), "--outdir", str(outdir), "--no-progress").returncode == 1
    run = json.loads((outdir / "run.json").read_text())
    ids = {e["parameters"]["n"]: e["id"] for e in run["batches"]}
    done = cli("status", "--outdir", str(outdir), "--wait")
    assert done.returncode == 1 and done.stdout.startswith(f"run {run['runId']}: failed")
    listed = cli("list", "--outdir", str(outdir))
    assert listed.returncode == 0 and listed.stdout.count("succeeded") == 1 and listed.stdout.count("failed") == 1
    cancel = cli("cancel", run["runId"], "--outdir", str(outdir))
    assert cancel.returncode == 0 and "nothing to cancel" in cancel.stderr

    failed, ok = cli("status", ids[2], "--outdir", str(outdir)), cli("status", ids[1], "--outdir", str(outdir))
    assert (failed.returncode, failed.stdout) == (1, f"batch {ids[2]}: failed\n")
    assert (ok.returncode, ok.stdout) == (0, f"batch {ids[1]}: succeeded\n")
    logs = cli("logs", ids[1], "--outdir", str(outdir), "--json")
    assert logs.returncode == 0 and json.loads(logs.stdout) == {"batchId": ids[1], "stream": "stdout", "text": "1\n"}
    assert cli("logs", ids[1], "--outdir", str(outdir), "-f", "--json").returncode == 2

    nowhere = cli("exec", str(red), "--resume", "--no-progress")
    assert nowhere.returncode == 2 and "--resume continues the run in --outdir" in nowhere.stderr
    fresh = cli("exec", str(red), "--resume", "--outdir", str(tmp_path / "fresh"), "--no-progress")
    assert fresh.returncode == 1 and f"no run in {tmp_path / 'fresh'} yet: starting a new one" in fresh.stderr
    assert Path(tmp_path / "fresh" / "run.json").is_file()
