"""sweep.search on faice's own agency server: the server runs the search loop (the local
engine's ask/tell, its trial log kept server-side), so a client that disconnects stops
nothing; ``faice exec --wait --outdir`` writes the run directory a local search leaves (each
trial's record, ``search/trials.jsonl`` with every trial's origin). A server that does not
announce searches is refused clearly, before anything is sent."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from agency_helpers import faice

from bench import search_objective

pytestmark = pytest.mark.docker


# The objective (bench/search_objective.py), unknown to faice: best at lr = 0.03 and batch size 64.
def search_red(path: Path, server, image: str, trials: int) -> Path:
    access = {"url": server.url, "auth": {"username": server.name("alice"), "password": "{{agency_password}}"}}
    red = search_objective.search_red(image, trials, pause=0.5, startupTrials=2, max_concurrent=2, ram=256,
                                      execution={"engine": "ccagency", "settings": {"access": access}})
    path.write_text(json.dumps(red))
    return path


def variables(server, tmp_path: Path) -> Path:
    path = tmp_path / "vars.yml"
    path.write_text(f"agency_password: {server.users['alice']}\n")
    return path


def wait_for(what, timeout: float, interval: float = 0.3):
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = what()
        if found:
            return found
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s")


def test_a_tpe_search_runs_on_the_server_and_outlives_its_client(make_agency, tmp_path, test_image):
    server = make_agency("--parallel", "2")
    red = search_red(tmp_path / "search.red.json", server, test_image, 6)
    vars_file = variables(server, tmp_path)
    outdir = tmp_path / "run"
    client = subprocess.Popen([sys.executable, "-m", "faice", "exec", str(red), "--variables", str(vars_file),
                               "--wait", "--outdir", str(outdir), "--no-progress"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        experiment_id = wait_for(lambda: json.loads((outdir / "run.json").read_text()).get("experimentId")
                                 if (outdir / "run.json").exists() else None, 60)
        # the server proposed the first trials (two at a time): the client goes away mid-search
        first = wait_for(lambda: server.batch_ids(experiment_id) if server.batch_ids(experiment_id) else None, 60)
        assert 1 <= len(first) <= 2
        client.send_signal(signal.SIGKILL)
    finally:
        client.kill()
        client.communicate(timeout=30)
    assert server.get(f"/experiments/{experiment_id}").json()["search"]["state"] == "running"

    search = wait_for(lambda: (lambda s: s if s["state"] != "running" else None)(
        server.get(f"/experiments/{experiment_id}").json()["search"]), 240, 1.0)
    assert search["state"] == "finished" and search["proposed"] == search["told"] == 6, search
    batch_ids = server.batch_ids(experiment_id)
    assert len(batch_ids) == 6
    assert all(server.get(f"/batches/{b}").json()["state"] == "succeeded" for b in batch_ids)

    # The client comes back: --resume follows the experiment and writes the run directory.
    again = faice("exec", str(red), "--variables", str(vars_file), "--wait", "--outdir", str(outdir), "--resume",
                  "--no-progress", timeout=120)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout.strip().splitlines()[0])["experimentId"] == experiment_id
    run = json.loads((outdir / "run.json").read_text())
    assert run["state"] == "succeeded" and run["counts"] == {"succeeded": 6}
    from faice.pipeline.search import read_log

    header, trials = read_log(outdir)
    assert header is not None and header["algorithm"] == "tpe" and header["budget"] == 6
    assert [t["trial"] for t in trials] == list(range(6))
    assert sorted(t["batch"] for t in trials) == sorted(e["id"] for e in run["batches"])
    assert [t["origin"] for t in trials[:2]] == ["startup", "startup"]
    assert "sampler" in {t["origin"] for t in trials[2:]}
    assert all(t["state"] == "succeeded" and t["sampler"] == "complete" and t["value"] is not None for t in trials)
    assert len({(t["parameters"]["lr"], t["parameters"]["bs"]) for t in trials}) == 6  # proposals differ
    for trial in trials:  # each trial's record carries its parameters and its objective
        record = json.loads((outdir / "batches" / trial["batch"] / "result.json").read_text())
        assert record["parameters"] == trial["parameters"]
        assert record["metrics"]["objective"]["value"] == pytest.approx(trial["value"])
    shown = faice("results", str(outdir))
    assert shown.returncode == 0, shown.stderr
    assert "search (tpe): 6 of 6 trials" in shown.stdout
    assert "Traceback" not in server.log.read_text()


def test_a_server_without_searches_is_refused_clearly(make_agency, tmp_path, test_image):
    """A server that cannot run searches (no Optuna there) does not announce them: the client
    says so before sending anything, and a search posted anyway is a 400 saying why."""
    shim = tmp_path / "no-optuna"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text("import sys\nsys.modules['optuna'] = None  # as if not installed\n")
    import os

    server = make_agency("--paused", env={**os.environ, "PYTHONPATH": str(shim)})
    assert "search" not in server.get("/version").json()["faiceFeatures"]
    red = search_red(tmp_path / "search.red.json", server, test_image, 4)
    result = faice("exec", str(red), "--variables", str(variables(server, tmp_path)), "--wait")
    assert result.returncode == 2, result.stderr
    assert "does not run searches" in result.stderr and "faice agency serve" in result.stderr
    assert server.get("/experiments/count").json() == {"count": 0}
    data = json.loads(red.read_text())
    data["execution"]["settings"]["access"]["auth"]["password"] = "filled"
    response = server.post_red(data)
    assert response.status_code == 400 and "cannot run sweep.search" in response.text


def test_a_search_goes_on_after_the_server_is_killed(make_agency, tmp_path, test_image):
    """The trial log is the server's: a server killed mid-search (SIGKILL) replays it at its next
    start, proposes the trials that were in flight again (origin ``again``) and takes up their
    batches instead of registering them twice; the search ends with its whole budget told."""
    server = make_agency("--parallel", "2")
    data = json.loads(search_red(tmp_path / "search.red.json", server, test_image, 6).read_text())
    data["execution"]["settings"]["access"]["auth"]["password"] = "filled"
    experiment_id = server.submit(data)

    def search() -> dict:
        return server.get(f"/experiments/{experiment_id}").json()["search"]

    wait_for(lambda: 2 <= search()["told"] < 5 and search()["proposed"] - search()["told"] >= 1, 120)
    server.stop(signal.SIGKILL)
    server.start()
    final = wait_for(lambda: (lambda s: s if s["state"] != "running" else None)(search()), 240, 1.0)
    assert final["state"] == "finished" and final["told"] == 6, final
    batch_ids = server.batch_ids(experiment_id)
    assert len(batch_ids) == 6, "a trial in flight took up its batch again"
    assert all(server.get(f"/batches/{b}").json()["state"] == "succeeded" for b in batch_ids)
    events = server.get(f"/experiments/{experiment_id}/trials").json()
    told = [e for e in events if e["event"] == "told"]
    asked = {e["trial"]: e for e in events if e["event"] == "asked"}
    assert len(told) == 6 and sorted(e["batch"] for e in told) == sorted(batch_ids)
    assert "again" in {asked[e["trial"]]["origin"] for e in told}
    assert "Traceback" not in server.log.read_text()


def test_faice_cancel_of_a_search_experiment_ends_the_search(make_agency, tmp_path, test_image):
    """``faice cancel EXPERIMENT`` cancels the trials in flight, and the server proposes no more:
    the search ends ``cancelled`` (a trial proposed while the client went through the batches
    is cancelled by the server before it starts)."""
    import os

    server = make_agency("--parallel", "2")
    data = json.loads(search_red(tmp_path / "search.red.json", server, test_image, 6).read_text())
    data["execution"]["settings"]["access"]["auth"]["password"] = "filled"
    experiment_id = server.submit(data)
    wait_for(lambda: len(server.batch_ids(experiment_id)) == 2, 60)
    config = tmp_path / "config"
    (config / "faice").mkdir(parents=True)
    (config / "faice" / "config.yml").write_text(f"agency:\n  url: {server.url}\n  username: {server.name('alice')}\n")
    result = faice("cancel", experiment_id, "--variables", str(variables(server, tmp_path)),
                   env={**os.environ, "XDG_CONFIG_HOME": str(config)})
    assert result.returncode == 0, result.stderr
    final = wait_for(lambda: (lambda s: s if s["state"] != "running" else None)(
        server.get(f"/experiments/{experiment_id}").json()["search"]), 60)
    assert final["state"] == "cancelled" and final["proposed"] < 6, final
    time.sleep(3)  # a few dispatcher rounds: nothing new is proposed
    batch_ids = server.batch_ids(experiment_id)
    assert len(batch_ids) == final["proposed"]
    assert {server.get(f"/batches/{b}").json()["state"] for b in batch_ids} <= {"cancelled", "succeeded"}
