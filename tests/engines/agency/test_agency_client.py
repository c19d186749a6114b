"""The client side: ``faice exec`` with the ccagency engine, ``faice status|logs|cancel|list``,
against a real ``faice agency serve``."""

from __future__ import annotations

import json
import re
import time

import agency_reds as reds
import pytest
from agency_helpers import faice

pytestmark = pytest.mark.docker


def _sweep_red(server, path, *, command="echo", values=("a", "b", "c")):
    red = reds.minimal(server.url, server.name("alice"), "{{agency_password}}", command=command)
    red["sweep"] = {"grid": {"some_string": list(values)}}
    path.write_text(json.dumps(red))
    return path


def _variables(server, tmp_path):
    path = tmp_path / "vars.yml"
    path.write_text(f"agency_password: {server.users['alice']}\n")
    return path


def test_exec_wait_runs_a_sweep_with_progress(agency, tmp_path):
    red_file = _sweep_red(agency, tmp_path / "sweep.red.json")
    result = faice("exec", str(red_file), "--variables", str(_variables(agency, tmp_path)), "--wait", "--json")
    assert result.returncode == 0, result.stderr
    submitted = json.loads(result.stdout.strip().splitlines()[0])
    assert len(submitted["batchIds"]) == 3
    assert submitted["batchIds"] == agency.batch_ids(submitted["experimentId"])
    # plain progress lines on stderr (no TTY): every batch reaches succeeded, then a summary
    for batch_id in submitted["batchIds"]:
        assert re.search(rf"batch \d {batch_id}: succeeded", result.stderr), result.stderr
    assert "3 batches: 3 succeeded" in result.stderr
    assert agency.users["alice"] not in result.stdout + result.stderr
    # what was sent is plain RED: the sweep became batches, no faice-only keys
    experiment = agency.get(f"/experiments/{submitted['experimentId']}").json()
    assert "sweep" not in experiment
    # faice logs shows a batch's stdout
    logs = faice("logs", submitted["batchIds"][1], "--red-file", str(red_file), "--variables", str(_variables(agency, tmp_path)))
    assert logs.returncode == 0, logs.stderr
    assert logs.stdout == "b\n"


def test_exec_without_wait_prints_experiment_id_json(paused_agency, tmp_path):
    red_file = tmp_path / "min.red.json"
    red_file.write_text(json.dumps(reds.minimal(paused_agency.url, paused_agency.name("alice"), "{{agency_password}}")))
    result = faice("exec", str(red_file), "--variables", str(_variables(paused_agency, tmp_path)))
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert list(printed) == ["experimentId"]
    assert paused_agency.get(f"/experiments/{printed['experimentId']}").status_code == 200


def test_exec_wait_exits_1_when_a_batch_fails(agency, tmp_path):
    red_file = tmp_path / "fail.red.json"
    red_file.write_text(json.dumps(reds.minimal(agency.url, agency.name("alice"), "{{agency_password}}", command="false")))
    result = faice("exec", str(red_file), "--variables", str(_variables(agency, tmp_path)), "--wait", "--disable-retry")
    assert result.returncode == 1
    assert "1 batch: 1 failed" in result.stderr


def test_exec_wrong_password_is_a_clear_401(paused_agency, tmp_path):
    red_file = tmp_path / "min.red.json"
    red_file.write_text(json.dumps(reds.minimal(paused_agency.url, paused_agency.name("alice"), "{{agency_password}}")))
    variables = tmp_path / "bad.yml"
    variables.write_text("agency_password: not-the-password\n")
    result = faice("exec", str(red_file), "--variables", str(variables))
    assert result.returncode == 1
    assert "refused user" in result.stderr and "Traceback" not in result.stderr
    assert "not-the-password" not in result.stderr


def test_exec_unreachable_agency_is_retried_then_fails_cleanly(tmp_path):
    from agency_helpers import free_port

    red_file = tmp_path / "min.red.json"
    red_file.write_text(json.dumps(reds.minimal(f"http://127.0.0.1:{free_port()}", "alice", "pw")))
    started = time.time()
    result = faice("exec", str(red_file))
    assert result.returncode == 1
    assert "cannot reach the agency" in result.stderr and "tried 5 times" in result.stderr
    assert "Traceback" not in result.stderr
    assert time.time() - started < 30


def test_status_list_and_cancel_with_agency_url(agency, tmp_path, monkeypatch, keyring_env):
    import keyring

    keyring.set_password("red", "agency_password", agency.users["alice"])
    env = {**keyring_env, "FAICE_AGENCY_USER": agency.name("alice")}
    experiment_id = agency.submit(reds.multi_batch(["1", "1"], command="sleep"))
    running = agency.batch_ids(agency.submit(reds.sleeping(120)))[0]
    agency.wait_state(running, states=("processing",))

    cancel = faice("cancel", running, "--agency", agency.url, env=env)
    assert cancel.returncode == 0, cancel.stderr
    assert f"{running}: cancelled" in cancel.stdout
    assert agency.wait_state(running)["state"] == "cancelled"

    status = faice("status", experiment_id, "--agency", agency.url, "--wait", env=env)
    assert status.returncode == 0, status.stderr
    assert "2 batches: 2 succeeded" in status.stdout

    as_json = faice("status", running, "--agency", agency.url, "--json", env=env)
    assert json.loads(as_json.stdout)["state"] == "cancelled"

    listing = faice("list", "--agency", agency.url, "--limit", "5", env=env)
    assert listing.returncode == 0, listing.stderr
    assert experiment_id in listing.stdout and "2 succeeded" in listing.stdout

    missing = faice("status", "0" * 24, "--agency", agency.url, env=env)
    assert missing.returncode == 1 and "no batch or experiment" in missing.stderr


def test_cancel_experiment_cancels_every_batch(paused_agency, tmp_path):
    experiment_id = paused_agency.submit(reds.multi_batch(["a", "b", "c"]))
    variables = _variables(paused_agency, tmp_path)
    env_config = tmp_path / "config"
    (env_config / "faice").mkdir(parents=True)
    (env_config / "faice" / "config.yml").write_text(f"agency:\n  url: {paused_agency.url}\n  username: {paused_agency.name('alice')}\n")
    import os

    env = {**os.environ, "XDG_CONFIG_HOME": str(env_config)}
    result = faice("cancel", experiment_id, "--variables", str(variables), env=env)
    assert result.returncode == 0, result.stderr
    states = [paused_agency.get(f"/batches/{i}").json()["state"] for i in paused_agency.batch_ids(experiment_id)]
    assert states == ["cancelled"] * 3


def test_no_agency_configured_is_a_usage_error(tmp_path):
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("FAICE_AGENCY")}
    env["XDG_CONFIG_HOME"] = str(tmp_path)
    result = faice("list", env=env)
    assert result.returncode == 2
    assert "--agency" in result.stderr and "Traceback" not in result.stderr


def test_status_and_logs_of_a_local_run_directory(test_image, tmp_path):
    red = reds.minimal(value="from-local")
    del red["execution"]
    red_file = tmp_path / "local.red.json"
    red_file.write_text(json.dumps(red))
    outdir = tmp_path / "run"
    result = faice("exec", str(red_file), "--outdir", str(outdir), "--no-progress")
    assert result.returncode == 0, result.stderr
    batch_id = next(p.name for p in (outdir / "batches").iterdir())
    status = faice("status", "--outdir", str(outdir))
    assert status.returncode == 0, status.stderr
    assert batch_id in status.stdout and "succeeded" in status.stdout
    logs = faice("logs", batch_id, "--outdir", str(outdir))
    assert logs.returncode == 0 and logs.stdout == "from-local\n"
    missing = faice("logs", "nope", "--outdir", str(outdir))
    assert missing.returncode == 2 and "no such file" in missing.stderr


def _metrics_red(server, path):
    """A three-batch sweep whose command prints its metric: faice's server reads it."""
    red = reds.minimal(server.url, server.name("alice"), "{{agency_password}}", command=["sh", "-c"],
                       value="echo \"score=$(sweep.score)\"")
    red["cli"]["inputs"]["some_string"]["inputBinding"] = {"position": 0}
    red["sweep"] = {"grid": {"score": [3, 1, 2]}}
    red["metrics"] = {"objective": {"name": "score", "goal": "max"},
                      "sources": [{"stdout": True}]}
    path.write_text(json.dumps(red))
    return path


def test_exec_wait_outdir_writes_the_run_directory_results_status_and_logs_read(agency, tmp_path):
    """Agency parity: --wait --outdir leaves the run directory a local run leaves (run.json, a
    record per batch with its metrics, stdout/stderr), so results, status and logs read it;
    --resume --outdir follows the experiment it knows instead of submitting it again."""
    red_file = _metrics_red(agency, tmp_path / "metrics.red.json")
    variables = _variables(agency, tmp_path)
    outdir = tmp_path / "run"
    result = faice("exec", str(red_file), "--variables", str(variables), "--wait", "--outdir", str(outdir), "--no-progress")
    assert result.returncode == 0, result.stderr
    experiment_id = json.loads(result.stdout.strip().splitlines()[0])["experimentId"]
    run = json.loads((outdir / "run.json").read_text())
    assert run["engine"] == "ccagency" and run["experimentId"] == experiment_id and run["state"] == "succeeded"
    assert run["counts"] == {"succeeded": 3}
    for entry in run["batches"]:
        record = json.loads((outdir / "batches" / entry["id"] / "result.json").read_text())
        assert record["state"] == "succeeded" and record["metrics"]["objective"]["name"] == "score"
        assert (outdir / "batches" / entry["id"] / "stdout.txt").read_text().startswith("score=")
    ranked = faice("results", str(outdir), "--format", "json")
    assert ranked.returncode == 0, ranked.stderr
    rows = json.loads(ranked.stdout)
    assert [row["objective"] for row in rows] == [3, 2, 1] and rows[0]["best"]
    status = faice("status", "--outdir", str(outdir), "--json")
    assert status.returncode == 0 and json.loads(status.stdout)["state"] == "succeeded"
    logs = faice("logs", run["batches"][0]["id"], "--outdir", str(outdir))
    assert logs.returncode == 0 and logs.stdout.startswith("score=")
    assert agency.users["alice"] not in "".join(p.read_text(errors="replace") for p in outdir.rglob("*") if p.is_file())
    again = faice("exec", str(red_file), "--variables", str(variables), "--wait", "--outdir", str(outdir),
                  "--resume", "--no-progress")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout.strip().splitlines()[0])["experimentId"] == experiment_id
    assert "following it instead of submitting again" in again.stderr
    assert agency.get("/experiments/count").json() == {"count": 1}


@pytest.mark.parametrize("flag", [["--parallel", "2"], ["--timeout", "5"], ["--retries", "1"], ["--fail-fast"],
                                  ["--max-failures", "1"], ["--gpu-ids", "0"], ["--runtime", "podman"]])
def test_local_pool_flags_are_refused_for_an_agency_not_ignored(flag, tmp_path):
    """The agency runs, retries and limits the batches itself: a local pool's flag is a usage
    error naming the flags the engine takes, before anything is sent."""
    red = reds.minimal("http://127.0.0.1:9", "alice", "x")
    path = tmp_path / "agency.red.json"
    path.write_text(json.dumps(red))
    result = faice("exec", str(path), *flag)
    assert result.returncode == 2, result.stderr
    assert f"{flag[0]} does not apply to the ccagency engine" in result.stderr
    assert "--outdir" in result.stderr and "--wait" in result.stderr  # what it takes instead


def test_resume_with_an_agency_needs_the_run_directory(tmp_path):
    red = reds.minimal("http://127.0.0.1:9", "alice", "x")
    path = tmp_path / "agency.red.json"
    path.write_text(json.dumps(red))
    result = faice("exec", str(path), "--resume")
    assert result.returncode == 2 and "--outdir" in result.stderr
