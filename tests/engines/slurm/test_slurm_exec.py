"""``faice exec`` with ``engine: slurm`` end to end: the real CLI, the real single-node Slurm
cluster and the real Docker engine (the node is this machine)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import docker_helpers
import pytest
from slurm_helpers import write_sweep_red

from faice.engines.slurm import client as slurm_cli
from faice.engines.slurm import job as engine

pytestmark = [pytest.mark.slurm, pytest.mark.docker]

def faice(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "faice", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, env={**os.environ, "NO_COLOR": "1"})


def records(outdir: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in (outdir / "batches").glob("*/result.json")}


def test_four_batch_sweep_completes_with_all_results_in_the_run_directory(slurm, test_image, tmp_path):
    red = write_sweep_red(tmp_path, test_image, [1, 2, 3, 4], "echo $(( $(sweep.n) * 10 )) > result.txt",
                    {"partition": slurm.partition})
    outdir = tmp_path / "run"
    result = faice("exec", str(red), "--outdir", str(outdir))  # submit, then follow with status
    assert result.returncode == 0, result.stderr
    assert "submitted Slurm job array" in result.stderr
    status = faice("status", "--outdir", str(outdir), "--wait", "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["state"] == "succeeded"
    run = json.loads((outdir / "run.json").read_text())
    assert run["engine"] == "slurm" and run["state"] == "succeeded"
    assert run["counts"] == {"succeeded": 4}
    found = records(outdir)
    assert len(found) == 4
    values = sorted(int((outdir / "batches" / b / "outputs" / "result.txt").read_text()) for b in found)
    assert values == [10, 20, 30, 40]
    for record in found.values():
        assert record["state"] == "succeeded" and record["process"]["returnCode"] == 0
    submission = json.loads((outdir / "slurm" / "submissions.json").read_text())
    assert len(submission) == 1 and len(submission[0]["batchIds"]) == 4  # ONE job array
    assert not list((outdir / "slurm" / "1" / "tasks").iterdir())  # no spec left behind


def test_failing_batch_is_reported_failed_with_its_stderr_and_resume_resubmits_only_it(slurm, test_image, tmp_path):
    script = "echo boom-$(sweep.n) >&2; echo $(sweep.n) > result.txt; test $(sweep.n) -ne 3"
    red = write_sweep_red(tmp_path, test_image, [1, 3], script, {"partition": slurm.partition})
    outdir = tmp_path / "run"
    result = faice("exec", str(red), "--outdir", str(outdir), "--wait", "--no-progress")
    assert result.returncode == 1
    assert "boom-3" in result.stderr and "failed" in result.stderr
    run = json.loads((outdir / "run.json").read_text())
    assert run["state"] == "failed" and run["counts"] == {"succeeded": 1, "failed": 1}
    failed = [e for e in run["batches"] if e["state"] == "failed"]
    assert failed[0]["failureClass"] == "exit-code" and failed[0]["parameters"] == {"n": 3}
    assert "boom-3" in (outdir / "batches" / failed[0]["id"] / "stderr.txt").read_text()

    # Without --resume the run directory is never reused.
    again = faice("exec", str(red), "--outdir", str(outdir), "--wait", "--no-progress")
    assert again.returncode == 2 and "--resume" in again.stderr

    resumed = faice("exec", str(red), "--outdir", str(outdir), "--resume", "--wait", "--no-progress")
    assert resumed.returncode == 1
    submissions = json.loads((outdir / "slurm" / "submissions.json").read_text())
    assert [s["batchIds"] for s in submissions][1] == [failed[0]["id"]]
    assert json.loads((outdir / "run.json").read_text())["counts"] == {"succeeded": 1, "failed": 1}
    # The same resume as a local run: one run id across --resume, the reuse said, red.json kept.
    assert {s["runId"] for s in submissions} == {run["runId"]}
    assert json.loads((outdir / "batches" / failed[0]["id"] / "result.json").read_text())["runId"] == run["runId"]
    assert "resume: 1 reused, 0 new, 1 re-run: failed" in resumed.stderr
    assert (outdir / "red.json").is_file()


def test_resume_leaves_batches_an_earlier_array_still_runs_to_it(slurm, test_image, tmp_path):
    """--resume while the first array still runs a batch: only the failed batch is submitted
    again; the running one keeps its task, its directory and its record."""
    script = "if [ $(sweep.n) -eq 1 ]; then sleep 15; echo one > result.txt; else exit 3; fi"
    red = write_sweep_red(tmp_path, test_image, [1, 2], script, {"partition": slurm.partition})
    outdir = tmp_path / "run"
    assert faice("exec", str(red), "--outdir", str(outdir)).returncode == 0  # submitted, not followed
    first = json.loads((outdir / "slurm" / "submissions.json").read_text())[0]
    ids = {parameters["n"]: batch for batch, parameters in first["batchParameters"].items()}
    deadline = time.monotonic() + 90
    while True:
        states = {n: (records(outdir).get(i) or {}).get("state") for n, i in ids.items()}
        running = (outdir / "batches" / ids[1] / "stdout.txt").exists()
        if states[2] == "failed" and states[1] is None and running:
            break
        assert time.monotonic() < deadline, f"batch 2 never failed while batch 1 ran: {states}"
        time.sleep(0.5)
    resumed = faice("exec", str(red), "--outdir", str(outdir), "--resume", "--wait", "--no-progress")
    assert "1 still queued or running in an earlier array, re-submitting 1" in resumed.stderr, resumed.stderr
    submissions = json.loads((outdir / "slurm" / "submissions.json").read_text())
    assert [s["batchIds"] for s in submissions] == [[ids[1], ids[2]], [ids[2]]]
    status = faice("status", "--outdir", str(outdir), "--wait", "--json", timeout=180)
    run = json.loads(status.stdout)
    assert run["counts"] == {"succeeded": 1, "failed": 1}
    assert (outdir / "batches" / ids[1] / "outputs" / "result.txt").read_text() == "one\n"
    assert records(outdir)[ids[1]]["engine"]["jobId"] == submissions[0]["jobId"]  # ran once, by the first array


def labelled_containers(docker_client, run_id: str) -> list:
    return docker_helpers.labelled_containers(docker_client, f"org.faice.run={run_id}")


def test_cancel_removes_the_jobs_and_their_containers(slurm, test_image, docker_client, tmp_path):
    # Three batches, two at a time: two run (sleeping), one stays pending.
    red = write_sweep_red(tmp_path, test_image, [1, 2, 3], "sleep 120; echo $(sweep.n)",
                    {"partition": slurm.partition, "batchConcurrencyLimit": 2})
    outdir = tmp_path / "run"
    result = faice("exec", str(red), "--outdir", str(outdir))  # submit only
    assert result.returncode == 0, result.stderr
    run = json.loads((outdir / "run.json").read_text())
    job = engine.open_run(outdir)[0]
    deadline = time.monotonic() + 60
    while len([c for c in labelled_containers(docker_client, run["runId"]) if c.status == "running"]) < 2:
        assert time.monotonic() < deadline, "the batch containers did not start"
        time.sleep(0.3)

    status = faice("status", "--outdir", str(outdir), "--json")
    assert status.returncode == 0, status.stderr
    live = json.loads(status.stdout)
    assert live["state"] == "running" and live["counts"] == {"running": 2, "pending": 1}
    # docs/slurm.md's own follow-up command, as text, while two batches run and one waits
    shown = faice("status", "--outdir", str(outdir))
    assert shown.returncode == 0, shown.stderr
    lines = {line.split()[1]: line.split() for line in shown.stdout.splitlines()[1:] if " b-" in line}
    assert sorted(lines[e["id"]][2] for e in live["batches"]) == ["pending", "running", "running"]
    assert sorted((lines[e["id"]][0], lines[e["id"]][3]) for e in live["batches"]) == [
        ("0", "n=1"), ("1", "n=2"), ("2", "n=3")]

    cancel = faice("cancel", "--outdir", str(outdir), run["runId"])
    assert cancel.returncode == 0, cancel.stderr
    assert "cancelled 3 batches" in cancel.stderr
    states = job.poll()
    assert set(states.values()) == {"cancelled"}
    assert not slurm_cli.queued_tasks(job.job_id)
    assert labelled_containers(docker_client, run["runId"]) == []
    assert {r["state"] for r in records(outdir).values()} == {"cancelled"}
    assert not list((outdir / "slurm" / "1" / "tasks").iterdir())
    assert engine.refresh_run(outdir)["state"] == "cancelled"


SECRET_RED = """\
redVersion: "9"
cli:
  cwlVersion: v1.0
  class: CommandLineTool
  baseCommand: [sh, -c, 'cat "$0" > result.txt']
  inputs:
    data: {{type: File, inputBinding: {{position: 0}}}}
  outputs:
    result: {{type: File, outputBinding: {{glob: result.txt}}}}
inputs:
  data:
    class: File
    connector: {{command: file, access: {{path: "{{{{data_dir}}}}/input.txt"}}}}
outputs: {{}}
container:
  engine: docker
  settings: {{image: {{url: "{image}"}}, ram: 256}}
execution:
  engine: slurm
  settings: {{partition: {partition}}}
"""


def test_filled_secrets_reach_the_task_but_never_the_run_directory(slurm, test_image, tmp_path):
    token = "s3cr3t-Dir-7q"
    secret_dir = tmp_path / token
    secret_dir.mkdir()
    (secret_dir / "input.txt").write_text("payload 42\n")
    red = tmp_path / "secret.red.yml"
    red.write_text(SECRET_RED.format(image=test_image, partition=slurm.partition))
    variables = tmp_path / "vars.yml"
    variables.write_text(f"data_dir: {secret_dir}\n")
    outdir = tmp_path / "run"
    result = faice("exec", str(red), "--variables", str(variables), "--non-interactive",
                   "--outdir", str(outdir), "--wait", "--no-progress", "--json")
    assert result.returncode == 0, result.stderr
    (batch,) = records(outdir)
    assert (outdir / "batches" / batch / "outputs" / "result.txt").read_text() == "payload 42\n"
    assert token not in result.stdout + result.stderr
    for path in outdir.rglob("*"):
        if path.is_file():
            assert token not in path.read_text(errors="replace"), f"secret written to {path}"
    assert not list((outdir / "slurm" / "1" / "tasks").iterdir())

    # A connector error on the node names the path: the task masks it like a local run would.
    missing = tmp_path / "missing-run"
    (secret_dir / "input.txt").unlink()
    result = faice("exec", str(red), "--variables", str(variables), "--non-interactive",
                   "--outdir", str(missing), "--wait", "--no-progress")
    assert result.returncode == 1
    (batch,) = records(missing)
    assert records(missing)[batch]["failureClass"] == "connector"
    assert "does not exist" in (missing / "batches" / batch / "stderr.txt").read_text()
    assert token not in result.stdout + result.stderr
    for path in missing.rglob("*"):
        if path.is_file():
            assert token not in path.read_text(errors="replace"), f"secret written to {path}"
