"""Packed Slurm runs (``workers: K``) end to end: the real CLI, the real single-node Slurm
cluster and Docker. Every batch's output is sent by an external connector program that
appends to a shared side-effect log, so a batch that ran twice would show twice."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import docker_helpers
import pytest
from slurm_helpers import wait_for, write_sweep_red

from faice.runtime.containers import LABEL_OWNER as OWNER_LABEL

pytestmark = [pytest.mark.slurm, pytest.mark.docker]

CONNECTOR = """#!/bin/sh
# A RED output connector (CLI 1) whose only effect is one line per delivered output.
case "$1" in
  cli-version) echo 1 ;;
  send-file-validate) # A slow check inside an allocation, when the test asks for one.
                      if [ -n "$SLURM_JOB_ID" ] && [ -f "$0.slow" ]; then touch "$0.checking"; sleep 60; fi; exit 0 ;;
  send-file) log=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["log"])' "$2")
             echo "$(cat "$3")" >> "$log" ;;
  *) echo "unsupported: $1" >&2; exit 1 ;;
esac
"""


def setup(tmp_path: Path, image: str, count: int, script: str, settings: dict, engine: str = "slurm"):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    connector = bin_dir / "faice-test-sidelog"
    connector.write_text(CONNECTOR)
    connector.chmod(0o755)
    log = tmp_path / f"side-{engine}.log"
    outputs = {"result": {"class": "File", "connector": {"command": "faice-test-sidelog", "access": {"log": str(log)}}}}
    red = write_sweep_red(tmp_path, image, list(range(count)), script, settings, outputs=outputs, engine=engine,
                          name=f"{engine}.red.yml")
    env = {**os.environ, "NO_COLOR": "1", "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    return red, log, env


def faice(env, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "faice", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, env=env)


def claimed_batches(worker_log: Path) -> list[str]:
    """The batches a worker says it claimed, in order (its Slurm output file)."""
    text = worker_log.read_text() if worker_log.exists() else ""
    return [line.split("batch ")[1].split(" ")[0] for line in text.splitlines() if "(task " in line]


def records(outdir: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in (outdir / "batches").glob("*/result.json")}


def count_calls(bin_dir: Path, tools: tuple[str, ...]) -> Path:
    """Put wrappers of the Slurm query tools first on PATH that log each call."""
    calls = bin_dir / "calls.log"
    for tool in tools:
        wrapper = bin_dir / tool
        wrapper.write_text(f'#!/bin/sh\necho {tool} >> "{calls}"\nexec {shutil.which(tool)} "$@"\n')
        wrapper.chmod(0o755)
    return calls


def test_twenty_batches_on_two_workers_one_sbatch_records_like_a_local_run(slurm, test_image, tmp_path):
    settings = {"partition": slurm.partition, "workers": 2}  # default pollInterval: 10 s
    red, log, env = setup(tmp_path, test_image, 20, "echo $(( $(sweep.n) * 10 )) > result.txt", settings)
    calls = count_calls(tmp_path / "bin", ("squeue", "scontrol", "sacct"))
    outdir = tmp_path / "run"
    started = time.monotonic()
    result = faice(env, "exec", str(red), "--outdir", str(outdir), "--wait", "--no-progress")
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    # Following the run: one squeue call for the whole array per 10 s, nothing per batch.
    queries = calls.read_text().split() if calls.exists() else []
    assert set(queries) <= {"squeue"} and 1 <= len(queries) <= elapsed // 10 + 1, (queries, elapsed)
    assert "2 workers for 20 batches" in result.stderr
    submissions = json.loads((outdir / "slurm" / "submissions.json").read_text())
    assert len(submissions) == 1  # exactly ONE sbatch call
    assert "--array=0-1" in submissions[0]["sbatch"] and len(submissions[0]["batchIds"]) == 20
    run = json.loads((outdir / "run.json").read_text())
    assert run["state"] == "succeeded" and run["counts"] == {"succeeded": 20}
    assert run["slurm"]["jobIds"] == [submissions[0]["jobId"]]
    found = records(outdir)
    assert sorted(int((outdir / "batches" / b / "outputs" / "result.txt").read_text()) for b in found) == \
        [n * 10 for n in range(20)]
    assert sorted(int(line) for line in log.read_text().split()) == [n * 10 for n in range(20)]  # each once
    workers = {r["engine"]["worker"] for r in found.values()}
    assert workers <= {f"{submissions[0]['jobId']}_0", f"{submissions[0]['jobId']}_1"}
    assert not list((outdir / "slurm" / "1" / "tasks").iterdir())  # no secret-bearing spec left
    assert not list((outdir / "slurm" / "1" / "work").iterdir())

    # The same sweep with the local engine: the batch records have the same shape.
    local_red, _, local_env = setup(tmp_path, test_image, 20, "echo $(( $(sweep.n) * 10 )) > result.txt", {},
                                    engine="local")
    local_out = tmp_path / "local"
    local = faice(local_env, "exec", str(local_red), "--outdir", str(local_out), "--no-progress")
    assert local.returncode == 0, local.stderr
    local_records = {r["parameters"]["n"]: r for r in records(local_out).values()}
    assert len(local_records) == 20
    for record in found.values():
        other = local_records[record["parameters"]["n"]]
        assert set(record) - {"engine"} == set(other)  # plus where it ran: node, job, worker
        assert set(record["process"]) == set(other["process"])
        assert (record["state"], record["parameters"], record["process"]["returnCode"]) == \
            (other["state"], other["parameters"], other["process"]["returnCode"])
    status = faice(env, "status", "--outdir", str(outdir), "--json")
    assert status.returncode == 0 and json.loads(status.stdout)["counts"] == {"succeeded": 20}
    table = faice(env, "results", str(outdir), "--format", "json")
    assert table.returncode == 0, table.stderr
    rows = json.loads(table.stdout)
    rows = rows["batches"] if isinstance(rows, dict) else rows
    assert sorted(r["param.n"] for r in rows) == list(range(20))


def test_a_cancelled_worker_gives_its_batches_to_the_other_and_none_runs_twice(slurm, test_image, tmp_path):
    settings = {"partition": slurm.partition, "workers": 2, "pollInterval": 1}
    red, log, env = setup(tmp_path, test_image, 8, "sleep 4; echo $(sweep.n) > result.txt", settings)
    outdir = tmp_path / "run"
    submit = faice(env, "exec", str(red), "--outdir", str(outdir))
    assert submit.returncode == 0, submit.stderr
    job_id = json.loads((outdir / "slurm" / "submissions.json").read_text())[0]["jobId"]
    worker_log = outdir / "slurm" / "logs" / f"slurm-{job_id}_0.out"

    taken = wait_for(lambda: claimed_batches(worker_log), timeout=120, what="worker 0 never claimed a batch")
    time.sleep(1)  # inside the batch's sleep
    subprocess.run(["scancel", f"{job_id}_0"], check=True, timeout=30)
    status = faice(env, "status", "--outdir", str(outdir), "--wait", "--json", timeout=300)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["counts"] == {"succeeded": 8}
    released = worker_log.read_text()
    assert "goes back to the queue" in released, released
    found = records(outdir)
    interrupted = taken[-1]
    assert found[interrupted]["engine"]["worker"] == f"{job_id}_1"  # re-run by the other worker
    assert found[interrupted]["engine"]["claim"] >= 1
    assert sorted(int(line) for line in log.read_text().split()) == list(range(8))  # none twice


def test_cancel_outdir_stops_the_workers_and_records_every_batch_cancelled(slurm, test_image, tmp_path):
    settings = {"partition": slurm.partition, "workers": 1, "pollInterval": 1}
    red, log, env = setup(tmp_path, test_image, 5, "sleep 60; echo $(sweep.n) > result.txt", settings)
    outdir = tmp_path / "run"
    assert faice(env, "exec", str(red), "--outdir", str(outdir)).returncode == 0
    submission = json.loads((outdir / "slurm" / "submissions.json").read_text())[0]
    wait_for(lambda: list((outdir / "slurm" / "1" / "queue" / "claimed").iterdir()), timeout=120,
             what="the worker never claimed a batch")
    specs = list((outdir / "slurm" / "1" / "tasks").iterdir())
    assert len(specs) == 5 and {oct(p.stat().st_mode & 0o777) for p in specs} == {"0o600"}
    started = time.monotonic()
    result = faice(env, "cancel", "all", "--outdir", str(outdir), timeout=180)
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 60  # the running batch was stopped, not waited for
    run = json.loads((outdir / "run.json").read_text())
    assert run["counts"] == {"cancelled": 5}, run["counts"]
    assert not list((outdir / "slurm" / "1" / "tasks").iterdir())  # secrets gone
    assert not log.exists()  # nothing was delivered
    wait_for(lambda: not subprocess.run(["squeue", "-h", "-j", submission["jobId"]], capture_output=True,
                                        text=True).stdout.strip(), timeout=60, what="the worker is still queued")


def worker_pid(job_id: str, task: int) -> int:
    """The process id of worker ``task`` of the array ``job_id`` (it runs on this machine)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            environ = dict(e.split(b"=", 1) for e in (proc / "environ").read_bytes().split(b"\0") if b"=" in e)
        except OSError:
            continue
        if b"faice.engines.slurm.worker" in cmdline and environ.get(b"SLURM_ARRAY_JOB_ID") == job_id.encode() \
                and environ.get(b"SLURM_ARRAY_TASK_ID") == str(task).encode():
            return int(proc.name)
    raise AssertionError(f"no worker process of {job_id}_{task}")


def test_a_killed_worker_s_claim_expires_and_is_run_once_by_the_other(slurm, test_image, tmp_path, docker_client):
    """SIGKILL (a lost node): no release, no goodbye; the lease runs out and the other worker
    re-runs the batch under a new claim generation."""
    settings = {"partition": slurm.partition, "workers": 2, "pollInterval": 1, "leaseSeconds": 5}
    red, log, env = setup(tmp_path, test_image, 6, "sleep 3; echo $(sweep.n) > result.txt", settings)
    outdir = tmp_path / "run"
    assert faice(env, "exec", str(red), "--outdir", str(outdir)).returncode == 0
    job_id = json.loads((outdir / "slurm" / "submissions.json").read_text())[0]["jobId"]
    worker_log = outdir / "slurm" / "logs" / f"slurm-{job_id}_0.out"

    taken = wait_for(lambda: claimed_batches(worker_log), timeout=120, what="worker 0 never claimed a batch")
    run_id = json.loads((outdir / "run.json").read_text())["runId"]
    pid = worker_pid(job_id, 0)

    def worker_0_containers() -> list:
        return [c for c in docker_helpers.labelled_containers(docker_client, f"org.faice.run={run_id}")
                if f":{pid}:" in c.labels.get(OWNER_LABEL, "")]

    wait_for(worker_0_containers, timeout=60, what="worker 0 started no container")
    os.kill(pid, signal.SIGKILL)  # the node is this machine: its container lives on, orphaned
    status = faice(env, "status", "--outdir", str(outdir), "--wait", "--json", timeout=300)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["counts"] == {"succeeded": 6}
    assert "goes back to the queue" not in worker_log.read_text()  # it had no chance to release
    record = records(outdir)[taken[-1]]
    assert record["engine"]["worker"] == f"{job_id}_1" and record["engine"]["claim"] >= 1
    assert sorted(int(line) for line in log.read_text().split()) == list(range(6))  # none twice


def test_cancel_of_one_batch_stops_it_where_it_runs_and_the_others_finish(slurm, test_image, tmp_path):
    settings = {"partition": slurm.partition, "workers": 1, "pollInterval": 1}
    red, log, env = setup(tmp_path, test_image, 3, "sleep $(( 60 * ($(sweep.n) == 0) )); echo $(sweep.n) > result.txt",
                          settings)
    outdir = tmp_path / "run"
    assert faice(env, "exec", str(red), "--outdir", str(outdir)).returncode == 0
    wait_for(lambda: (outdir / "slurm" / "1" / "queue" / "claimed" / "0.0").exists(), timeout=120,
             what="the worker never claimed batch 0")
    first = json.loads((outdir / "slurm" / "submissions.json").read_text())[0]["batchIds"][0]
    time.sleep(2)  # its container is running
    result = faice(env, "cancel", first, "--outdir", str(outdir), timeout=240)
    assert result.returncode == 0, result.stderr
    status = faice(env, "status", "--outdir", str(outdir), "--wait", "--json", timeout=240)
    run = json.loads(status.stdout)
    assert run["counts"] == {"cancelled": 1, "succeeded": 2}, run["counts"]
    assert [e["id"] for e in run["batches"] if e["state"] == "cancelled"] == [first]
    assert sorted(int(line) for line in log.read_text().split()) == [1, 2]


def test_a_worker_runs_batches_per_worker_at_once_in_an_allocation_sized_for_them(slurm, test_image, tmp_path):
    settings = {"partition": slurm.partition, "workers": 1, "batchesPerWorker": 2, "pollInterval": 1}
    red, log, env = setup(tmp_path, test_image, 4, "sleep 3; echo $(sweep.n) > result.txt", settings)
    outdir = tmp_path / "run"
    result = faice(env, "exec", str(red), "--outdir", str(outdir), "--wait", "--no-progress")
    assert result.returncode == 0, result.stderr
    submission = json.loads((outdir / "slurm" / "submissions.json").read_text())[0]
    assert {"--array=0", "--cpus-per-task=2", "--mem=512M"} <= set(submission["sbatch"])  # 2 × (1 CPU, 256 MB)
    found = sorted(records(outdir).values(), key=lambda r: r["started"])
    assert len(found) == 4 and {r["engine"]["worker"] for r in found} == {f"{submission['jobId']}_0"}
    # Two at a time: the second batch started before the first one finished.
    assert found[1]["started"] < found[0]["finished"]
    assert sorted(int(line) for line in log.read_text().split()) == [0, 1, 2, 3]


def test_resume_of_a_packed_run_repacks_only_the_failed_batches(slurm, test_image, tmp_path):
    settings = {"partition": slurm.partition, "workers": 2, "pollInterval": 1}
    red, log, env = setup(tmp_path, test_image, 3, "echo $(sweep.n) > result.txt; test $(sweep.n) -ne 1", settings)
    outdir = tmp_path / "run"
    first = faice(env, "exec", str(red), "--outdir", str(outdir), "--wait", "--no-progress")
    assert first.returncode == 1
    assert json.loads((outdir / "run.json").read_text())["counts"] == {"succeeded": 2, "failed": 1}
    resumed = faice(env, "exec", str(red), "--outdir", str(outdir), "--resume", "--wait", "--no-progress")
    assert resumed.returncode == 1
    submissions = json.loads((outdir / "slurm" / "submissions.json").read_text())
    assert len(submissions) == 2 and len(submissions[1]["batchIds"]) == 1
    assert submissions[1]["packed"]["workers"] == 1  # never more workers than batches
    failed = records(outdir)[submissions[1]["batchIds"][0]]
    assert failed["parameters"] == {"n": 1} and failed["engine"]["jobId"] == submissions[1]["jobId"]
    run = json.loads((outdir / "run.json").read_text())
    assert run["counts"] == {"succeeded": 2, "failed": 1} and run["slurm"]["jobIds"] == [s["jobId"] for s in submissions]


@pytest.mark.parametrize("busy_with", ["command", "connector-check"])
def test_batches_left_when_every_worker_is_gone_get_a_failure_record(slurm, test_image, tmp_path, busy_with):
    """The allocations ended (here: scancel outside faice; a time limit alike) with batches
    still queued: nobody can run them, and the follower says so instead of waiting forever.
    ``connector-check``: scancel's SIGTERM also kills the connector program checking access
    for the claimed batch; that failure is the stop's doing, and the batch goes back to the
    queue like the others instead of being recorded as a connector failure."""
    settings = {"partition": slurm.partition, "workers": 1, "pollInterval": 1}
    red, log, env = setup(tmp_path, test_image, 3, "sleep 60; echo $(sweep.n) > result.txt", settings)
    if busy_with == "connector-check":
        (tmp_path / "bin" / "faice-test-sidelog.slow").touch()
    outdir = tmp_path / "run"
    assert faice(env, "exec", str(red), "--outdir", str(outdir)).returncode == 0
    job_id = json.loads((outdir / "slurm" / "submissions.json").read_text())[0]["jobId"]
    wait_for(lambda: list((outdir / "slurm" / "1" / "queue" / "claimed").iterdir()), timeout=120,
             what="the worker never claimed a batch")
    if busy_with == "connector-check":
        wait_for((tmp_path / "bin" / "faice-test-sidelog.checking").exists, timeout=60,
                 what="the worker never checked the connector")
    subprocess.run(["scancel", job_id], check=True, timeout=30)
    status = faice(env, "status", "--outdir", str(outdir), "--wait", "--json", timeout=240)
    run = json.loads(status.stdout)
    assert run["counts"] == {"failed": 3}, run["counts"]
    for record in records(outdir).values():
        assert record["failureClass"] == "engine" and "no faice worker" in record["message"]
    assert not list((outdir / "slurm" / "1" / "tasks").iterdir())
    assert not log.exists()


def test_a_batch_task_stopped_while_checking_its_connector_is_recorded_cancelled(slurm, test_image, tmp_path):
    """For contrast, one task per batch (no ``workers``): scancel's SIGTERM kills the task's
    connector check too, and the record blames the stop, not the connector."""
    settings = {"partition": slurm.partition, "pollInterval": 1}
    red, log, env = setup(tmp_path, test_image, 1, "echo $(sweep.n) > result.txt", settings)
    (tmp_path / "bin" / "faice-test-sidelog.slow").touch()
    outdir = tmp_path / "run"
    assert faice(env, "exec", str(red), "--outdir", str(outdir)).returncode == 0
    job_id = json.loads((outdir / "slurm" / "submissions.json").read_text())[0]["jobId"]
    wait_for((tmp_path / "bin" / "faice-test-sidelog.checking").exists, timeout=120,
             what="the task never checked the connector")
    subprocess.run(["scancel", job_id], check=True, timeout=30)
    status = faice(env, "status", "--outdir", str(outdir), "--wait", "--json", timeout=240)
    assert json.loads(status.stdout)["counts"] == {"cancelled": 1}, status.stdout
    (record,) = records(outdir).values()
    assert record["failureClass"] == "cancelled", record
    assert not log.exists()
