"""``faice agency serve --engine slurm``: a real server process dispatching its batches to the
real single-node Slurm cluster (whose node is this machine, with its Docker engine)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import agency_fixtures as fixtures  # tests/support: the agency tests' server helpers
import agency_reds as reds
import docker_helpers
import pytest
from agency_helpers import faice
from slurm_helpers import wait_for

from faice.engines.slurm import client as slurm_cli

pytestmark = [pytest.mark.slurm, pytest.mark.docker]


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    make, started = fixtures._factory(tmp_path_factory.mktemp("slurm-agency"))
    yield make
    fixtures._stop_all(started)


def slurm_args(slurm) -> list[str]:
    return ["--engine", "slurm", "--slurm-partition", slurm.partition, "--slurm-time", "00:10:00"]


@pytest.fixture(scope="module")
def agency(servers, slurm, test_image):
    return servers(*slurm_args(slurm), "--parallel", "4", "--slurm-sbatch-arg=--comment=agency-on-slurm")


def slurm_jobs(server, batch_id: str) -> list[str]:
    """The Slurm job ids of the batch's attempts, from its run directories in the workdir."""
    ids = []
    for path in sorted((server.dir / "work" / "batches" / batch_id).glob("attempt-*/slurm/submissions.json")):
        ids += [entry["jobId"] for entry in json.loads(path.read_text())]
    return ids



def containers(docker_client, batch_id: str) -> list:
    return docker_helpers.labelled_containers(docker_client, f"org.faice.batch={batch_id}")


def scontrol_job(job_id: str) -> str:
    return subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True, timeout=30).stdout


def test_two_batches_from_the_client_run_as_slurm_jobs(agency, slurm, tmp_path):
    red = reds.minimal(agency.url, agency.name("alice"), "{{agency_password}}", command="echo")
    red["sweep"] = {"grid": {"some_string": ["first", "second"]}}
    red_file = tmp_path / "sweep.red.json"
    red_file.write_text(json.dumps(red))
    variables = tmp_path / "vars.yml"
    variables.write_text(f"agency_password: {agency.users['alice']}\n")

    result = faice("exec", str(red_file), "--variables", str(variables), "--wait", "--json", timeout=180)
    assert result.returncode == 0, result.stderr + agency.log.read_text()[-3000:]
    assert "2 batches: 2 succeeded" in result.stderr
    batch_ids = json.loads(result.stdout.strip().splitlines()[0])["batchIds"]
    for batch_id, word in zip(batch_ids, ["first", "second"], strict=True):
        batch = agency.get(f"/batches/{batch_id}").json()
        assert batch["state"] == "succeeded" and batch["attempts"] == 1
        assert batch["node"] == "slurm"
        assert batch["history"][-1]["ccagent"]["process"]["returnCode"] == 0
        assert agency.get(f"/batches/{batch_id}/stdout").text == f"{word}\n"
        logs = faice("logs", batch_id, "--red-file", str(red_file), "--variables", str(variables))
        assert logs.returncode == 0 and logs.stdout == f"{word}\n", logs.stderr
        # It ran as a Slurm job of the server's settings (slurmctld remembers finished jobs).
        (job_id,) = [line.split("Slurm job ")[1].split()[0] for line in agency.log.read_text().splitlines()
                     if f"batch {batch_id}: Slurm job" in line]
        shown = scontrol_job(job_id)
        assert "JobState=COMPLETED" in shown and f"Partition={slurm.partition}" in shown
        assert "TimeLimit=00:10:00" in shown and "Comment=agency-on-slurm" in shown
        # The batch's run directory is removed once it is final.
        assert not (agency.dir / "work" / "batches" / batch_id).exists()


def test_failing_batch_is_failed_with_its_stderr(agency):
    red = reds.minimal(command=["sh", "-c"], value="echo boom-on-slurm >&2; exit 3")
    batch_id = agency.batch_ids(agency.submit(red, disableRetry="1"))[0]
    batch = agency.wait_state(batch_id, timeout=120)
    assert (batch["state"], batch["attempts"]) == ("failed", 1)
    assert "boom-on-slurm" in agency.get(f"/batches/{batch_id}/stderr").text
    assert batch["history"][-1]["ccagent"]["process"]["returnCode"] == 3
    assert batch["history"][-1]["debugInfo"]


def test_cancel_through_the_api_removes_the_slurm_job_and_its_container(agency, docker_client):
    batch_id = agency.batch_ids(agency.submit(reds.sleeping(120)))[0]
    agency.wait_state(batch_id, states=("processing",))
    wait_for(lambda: [c for c in containers(docker_client, batch_id) if c.status == "running"], 60,
             "the batch's container did not start")
    (job_id,) = slurm_jobs(agency, batch_id)
    assert slurm_cli.queued_tasks(job_id), "the batch is not a queued Slurm job"

    response = agency.delete(f"/batches/{batch_id}")
    assert response.status_code == 200 and response.json()["state"] == "cancelled"
    wait_for(lambda: not slurm_cli.queued_tasks(job_id), 20, f"Slurm job {job_id} is still queued")
    wait_for(lambda: not containers(docker_client, batch_id), 20, "the batch's container was left behind")
    batch = agency.wait_state(batch_id)
    assert batch["state"] == "cancelled" and batch["attempts"] == 1  # never retried
    wait_for(lambda: not (agency.dir / "work" / "batches" / batch_id).exists(), 20, "run directory left behind")


def test_secrets_never_reach_slurm_or_the_workdir_in_the_clear(agency, http_server, tmp_path):
    """The connector password is needed by the task on the node, yet it appears neither in
    sbatch's arguments (scontrol, squeue), nor in ps, nor in any file but the 0600 task spec."""
    secret = "Slurm-agency-pw-" + os.urandom(6).hex()
    name = f"agency-slurm-{os.urandom(4).hex()}.txt"
    (http_server.root / name).write_text("payload\n")
    red = reds.minimal(command=["sh", "-c"], value='cat "$0"; sleep 4')
    red["cli"]["inputs"]["data"] = {"type": "File", "inputBinding": {"position": 1}}
    red["inputs"]["data"] = {
        "class": "File",
        "connector": {"command": "http", "access": {"url": f"{http_server.url}/{name}",
                                                    "auth": {"username": "someone", "password": secret}}},
    }
    try:
        batch_id = agency.batch_ids(agency.submit(red, disableRetry="1"))[0]
        agency.wait_state(batch_id, states=("processing", "succeeded", "failed"))
        seen: list[str] = []
        while agency.get(f"/batches/{batch_id}").json()["state"] not in fixtures.FINAL:
            for job_id in slurm_jobs(agency, batch_id):
                seen.append(job_id)
                assert secret not in scontrol_job(job_id)
                squeue = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%all"], capture_output=True, text=True, timeout=30)
                assert secret not in squeue.stdout
            ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, timeout=30).stdout
            assert secret not in ps
            for path in (agency.dir / "work").rglob("*"):
                if path.is_file() and secret in path.read_text(errors="replace"):
                    assert path.stat().st_mode & 0o777 == 0o600 and path.parent.name == "tasks", path
            time.sleep(0.3)
        batch = agency.get(f"/batches/{batch_id}").json()
        assert batch["state"] == "succeeded", batch["history"]
        assert seen, "the batch never became a Slurm job"
        assert agency.get(f"/batches/{batch_id}/stdout").text == "payload\n"
        assert secret not in json.dumps(batch) + agency.log.read_text()
        for path in (agency.dir / "work").rglob("*"):
            assert not (path.is_file() and secret in path.read_text(errors="replace")), path
    finally:
        (http_server.root / name).unlink(missing_ok=True)


def test_restart_cancels_the_orphaned_slurm_job_and_retries_the_batch(servers, slurm, docker_client):
    server = servers(*slurm_args(slurm))
    batch_id = server.batch_ids(server.submit(reds.sleeping(120)))[0]
    server.wait_state(batch_id, states=("processing",))
    (first,) = wait_for(lambda: slurm_jobs(server, batch_id), 30, "no Slurm job")
    wait_for(lambda: any(t.is_running for t in slurm_cli.queued_tasks(first).values()), 30, "the job did not start")

    server.stop(signal.SIGKILL)  # the Slurm job keeps running without its server
    assert slurm_cli.queued_tasks(first)
    server.start()
    wait_for(lambda: not slurm_cli.queued_tasks(first), 60, f"the orphaned Slurm job {first} still runs")
    batch = server.wait_state(batch_id, states=("processing",))
    assert batch["attempts"] == 2
    assert "agency was restarted" in json.dumps(batch["history"])
    second = wait_for(lambda: [j for j in slurm_jobs(server, batch_id) if j != first], 30, "no second attempt")
    assert second and slurm_cli.queued_tasks(second[0])
    server.delete(f"/batches/{batch_id}")
    wait_for(lambda: not slurm_cli.queued_tasks(second[0]), 30, "the retried job was not cancelled")
    wait_for(lambda: not containers(docker_client, batch_id), 30, "containers left behind")


def test_start_fails_clearly_without_sbatch_or_with_options_slurm_refuses(slurm, tmp_path):
    common = ["agency", "serve", "--db", f"sqlite:///{tmp_path / 'a.db'}", "--port", "1"]
    no_slurm = {**os.environ, "PATH": str(Path(sys.executable).parent)}
    result = faice(*common, "--engine", "slurm", env=no_slurm, timeout=60)
    assert result.returncode == 1
    assert "sbatch not found" in result.stderr and "Traceback" not in result.stderr

    result = faice(*common, "--engine", "slurm", "--slurm-partition", "no-such-partition", timeout=60)
    assert result.returncode == 2
    assert "no-such-partition" in result.stderr or "invalid partition" in result.stderr.lower()
    assert "Traceback" not in result.stderr

    result = faice(*common, "--slurm-partition", slurm.partition, timeout=60)
    assert result.returncode == 2 and "--slurm-partition: only with --engine slurm" in result.stderr

    for packing, expected in ((["--slurm-workers", "0"], "--slurm-workers 0: expected an integer between 1 and 10000"),
                              (["--slurm-batches-per-worker", "2"], "only with --slurm-workers")):
        result = faice(*common, "--engine", "slurm", *packing, timeout=60)
        assert result.returncode == 2 and expected in result.stderr and "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def packed_agency(servers, slurm, test_image):
    return servers(*slurm_args(slurm), "--slurm-workers", "2")


def pack_line(server, batch_id: str) -> str:
    return next(line for line in server.log.read_text().splitlines() if "(packed:" in line and batch_id in line)


def pack_jobs(server, batch_id: str) -> list[str]:
    """The Slurm job ids of the packs the batch was submitted in, from the server's log."""
    return [line.split(": Slurm job ")[1].split()[0] for line in server.log.read_text().splitlines()
            if "(packed:" in line and batch_id in line]


def test_packed_server_runs_an_experiment_s_batches_in_one_array_of_two_workers(packed_agency):
    values = [f"word-{n}" for n in range(6)]
    batch_ids = packed_agency.batch_ids(packed_agency.submit(reds.multi_batch(values, command="echo")))
    batches = [packed_agency.wait_state(b, timeout=180) for b in batch_ids]
    assert [b["state"] for b in batches] == ["succeeded"] * 6, [b["history"][-1] for b in batches]
    # One sbatch for the six: the same Slurm job in every batch's log line, two workers.
    lines = {pack_line(packed_agency, b) for b in batch_ids}
    assert len(lines) == 1 and "(packed: 6 batches, 2 worker(s))" in lines.pop()
    job_ids = set()
    for batch_id, batch, word in zip(batch_ids, batches, values, strict=True):
        assert packed_agency.get(f"/batches/{batch_id}/stdout").text == f"{word}\n"
        engine = batch["history"][-1]["ccagent"]["engine"]
        assert engine["name"] == "slurm" and "queueIndex" in engine  # run by a worker from the queue
        job_ids.add(engine["jobId"])
        assert engine["worker"] in {f"{engine['jobId']}_0", f"{engine['jobId']}_1"}
    assert len(job_ids) == 1
    job_id = job_ids.pop()
    # Both workers of the one array end once the queue is empty.
    wait_for(lambda: (lines := scontrol_job(job_id).splitlines()) and len(lines) == 2
             and all("JobState=COMPLETED" in line for line in lines), 60, f"Slurm job {job_id} did not complete")
    wait_for(lambda: not list((packed_agency.dir / "work" / "slurm-packs").iterdir()), 20,
             "the pack's directory was left behind")


def test_packed_server_cancels_one_batch_where_its_worker_runs_it(packed_agency, docker_client):
    red = reds.multi_batch(["sleep 120", "echo fast"], command=["sh", "-c"])
    slow, fast = packed_agency.batch_ids(packed_agency.submit(red, disableRetry="1"))
    wait_for(lambda: [c for c in containers(docker_client, slow) if c.status == "running"], 90,
             "the slow batch's container did not start")
    response = packed_agency.delete(f"/batches/{slow}")
    assert response.status_code == 200 and response.json()["state"] == "cancelled"
    wait_for(lambda: not containers(docker_client, slow), 30, "the cancelled batch's container was left behind")
    assert packed_agency.wait_state(slow, timeout=60)["state"] == "cancelled"
    assert packed_agency.wait_state(fast, timeout=120)["state"] == "succeeded"
    assert packed_agency.get(f"/batches/{fast}/stdout").text == "fast\n"



def test_packed_restart_cancels_the_orphaned_pack_and_retries_the_batch(servers, slurm, docker_client):
    server = servers(*slurm_args(slurm), "--slurm-workers", "1")
    batch_id = server.batch_ids(server.submit(reds.sleeping(120)))[0]
    wait_for(lambda: [c for c in containers(docker_client, batch_id) if c.status == "running"], 90,
             "the batch's container did not start")
    (first,) = pack_jobs(server, batch_id)

    server.stop(signal.SIGKILL)  # the pack's worker keeps running without its server
    assert slurm_cli.queued_tasks(first)
    server.start()
    wait_for(lambda: not slurm_cli.queued_tasks(first), 60, f"the orphaned pack {first} still runs")
    assert "JobState=CANCELLED" in scontrol_job(first)  # scancelled, not ended on its own
    batch = server.wait_state(batch_id, states=("processing",))
    assert batch["attempts"] == 2 and "agency was restarted" in json.dumps(batch["history"])
    second = wait_for(lambda: [j for j in pack_jobs(server, batch_id) if j != first], 30, "no second pack")
    server.delete(f"/batches/{batch_id}")
    wait_for(lambda: not slurm_cli.queued_tasks(second[0]), 60, "the retried pack's worker did not end")
    wait_for(lambda: not containers(docker_client, batch_id), 30, "containers left behind")


def test_a_search_runs_its_trials_as_slurm_jobs(agency, tmp_path, test_image):
    """sweep.search on an agency on Slurm: the server proposes the trials, each runs as a Slurm
    job, and each ended trial teaches the sampler (record with its parameters and objective)."""
    train = "import sys; x = float(sys.argv[1]); print('acc=%.6f' % (1 - (x - 0.3) ** 2))"
    red = {
        "redVersion": "9",
        "cli": {"cwlVersion": "v1.0", "class": "CommandLineTool", "baseCommand": ["python3", "-c", train],
                "inputs": {"x": {"type": "float", "inputBinding": {"position": 1}}}, "outputs": {}},
        "inputs": {"x": 0.5}, "outputs": {},
        "sweep": {"search": {"algorithm": "random", "trials": 4, "seed": 3, "parameters": {"x": {"uniform": [0, 1]}}},
                  "maxConcurrent": 2},
        "metrics": {"objective": {"name": "acc", "goal": "max"}, "sources": [{"stdout": True}]},
        "container": {"engine": "docker", "settings": {"image": {"url": test_image}, "ram": 256}},
        "execution": {"engine": "ccagency", "settings": {"access": {
            "url": agency.url, "auth": {"username": agency.name("alice"), "password": "{{agency_password}}"}}}},
    }
    red_file = tmp_path / "search.red.json"
    red_file.write_text(json.dumps(red))
    variables = tmp_path / "vars.yml"
    variables.write_text(f"agency_password: {agency.users['alice']}\n")
    outdir = tmp_path / "run"
    result = faice("exec", str(red_file), "--variables", str(variables), "--wait", "--outdir", str(outdir),
                   "--no-progress", timeout=300)
    assert result.returncode == 0, result.stderr + agency.log.read_text()[-3000:]
    from faice.pipeline.search import read_log

    _, trials = read_log(outdir)
    assert len(trials) == 4 and all(t["state"] == "succeeded" and t["sampler"] == "complete" for t in trials)
    for trial in trials:
        assert agency.get(f"/batches/{trial['batch']}").json()["node"] == "slurm"
        record = json.loads((outdir / "batches" / trial["batch"] / "result.json").read_text())
        assert record["parameters"] == trial["parameters"]
        assert record["metrics"]["objective"]["value"] == pytest.approx(1 - (trial["parameters"]["x"] - 0.3) ** 2,
                                                                        abs=1e-5)
