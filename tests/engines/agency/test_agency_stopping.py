"""faice's own server applies the ``metrics`` section's early stopping to the batches of one
experiment, as the local engine applies it to the batches of one run: the same batches stop,
with the same record (state ``stopped``, failure class ``stopped-early``, the rule's reason),
and ``faice exec --wait --outdir`` writes them into the run directory."""

from __future__ import annotations

import json

import pytest
from agency_helpers import faice
from engine_helpers import sh_red
from slurm_helpers import wait_for

pytestmark = pytest.mark.docker

# acc(n, step) = quality(n) · (1 − 0.8^(step+1)): the order of the batches is the same at every
# step (n = 3 best, then 4, 2, 1, 5, 6). One batch at a time, in grid order, ASHA (rungs at
# steps 1 and 3, keep the best third) lets 1, 2 and 3 go on (each the best so far at every
# rung) and stops 4, 5 and 6 at the first rung.
CURVE = ("python3 -u -c 'import sys, time\n"
         "n = int(sys.argv[1])\n"
         "quality = {1: 0.8, 2: 0.85, 3: 0.95, 4: 0.9}.get(n, 0.8 - 0.05 * n)\n"
         "for step in range(8):\n"
         "    print(\"step=%d acc=%.6f\" % (step, quality * (1 - 0.8 ** (step + 1))))\n"
         "    time.sleep(0.3)\n' \"$0\"")
EARLY = {"rule": "asha", "graceSteps": 1, "reductionFactor": 3, "maxSteps": 8}
METRICS = {"objective": {"name": "acc", "goal": "max"}, "step": "step", "sources": [{"stdout": True}],
           "earlyStopping": EARLY}


def curve_red(path, image: str, execution: dict) -> dict:
    red = json.loads(sh_red(path, CURVE, image, sweep={"grid": {"n": list(range(1, 7))}}, ram=256).read_text())
    red["metrics"] = METRICS
    red["execution"] = execution
    path.write_text(json.dumps(red))
    return red


def run_on_agency(server, tmp_path, test_image) -> tuple:
    """The grid on ``server`` (faice exec --wait --outdir): the run directory, the variables
    file, run.json and the batch records by n. Stopped batches end as planned: the run
    succeeded, and the progress says stopped, not cancelled."""
    curve_red(tmp_path / "agency.red.json", test_image, {"engine": "ccagency", "settings": {"access": {
        "url": server.url, "auth": {"username": server.name("alice"), "password": "{{agency_password}}"}}}})
    variables = tmp_path / "vars.yml"
    variables.write_text(f"agency_password: {server.users['alice']}\n")
    outdir = tmp_path / "agency"
    result = faice("exec", str(tmp_path / "agency.red.json"), "--variables", str(variables), "--wait",
                   "--outdir", str(outdir), "--no-progress", timeout=300)
    assert result.returncode == 0, result.stderr
    assert "6 batches: 3 succeeded, 3 stopped" in result.stderr, result.stderr
    run = json.loads((outdir / "run.json").read_text())
    assert run["state"] == "succeeded" and run["counts"] == {"succeeded": 3, "stopped": 3}, run
    records = {}
    for entry in run["batches"]:
        record = json.loads((outdir / "batches" / entry["id"] / "result.json").read_text())
        records[record["batchIndex"] + 1] = record  # the grid's order: n = index + 1
    return outdir, variables, run, records


def test_the_agency_stops_the_batches_the_local_engine_stops(make_agency, tmp_path, test_image):
    curve_red(tmp_path / "local.red.json", test_image, {"engine": "ccfaice", "settings": {}})
    # In its own process, as a user runs it (in-process, an earlier test's state once kept it from stopping any).
    local = faice("exec", str(tmp_path / "local.red.json"), "--parallel", "1", "--outdir", str(tmp_path / "local"),
                  "--no-progress", timeout=300)
    assert local.returncode == 0, local.stderr
    local_records = {e["parameters"]["n"]: e for e in json.loads((tmp_path / "local" / "run.json").read_text())["batches"]}
    local_stopped = sorted(n for n, e in local_records.items() if e["state"] == "stopped")
    assert local_stopped == [4, 5, 6], local_records

    server = make_agency("--parallel", "1")
    outdir, variables, run, records = run_on_agency(server, tmp_path, test_image)
    assert sorted(n for n, r in records.items() if r["state"] == "stopped") == local_stopped
    for n in local_stopped:
        local_record = json.loads((tmp_path / "local" / "batches" / local_records[n]["id"] / "result.json").read_text())
        assert records[n]["failureClass"] == local_record["failureClass"] == "stopped-early"
        assert records[n]["message"] == local_record["message"], (records[n]["message"], local_record["message"])
        assert records[n]["message"].startswith("stopped early by the asha rule at step 1 (rung 1 of 2)")
    for n in (1, 2, 3):
        assert records[n]["state"] == "succeeded" and records[n]["metrics"]["objective"]["value"] > 0
    # CC-Agency's own view: the stopped batches are "cancelled" (its states have no "stopped"),
    # with the rule's reason; never retried.
    batch = server.get(f"/batches/{run['batches'][3]['id']}").json()
    assert batch["state"] == "cancelled" and batch["attempts"] == 1
    assert "stopped early by the asha rule at step 1" in batch["history"][-1]["debugInfo"]
    # faice status of the experiment and of a stopped batch, as a user checks later: stopped,
    # not cancelled, and --wait counts a stopped batch as ended as planned.
    access = ("--red-file", str(tmp_path / "agency.red.json"), "--variables", str(variables))
    status = faice("status", run["experimentId"], "--wait", *access)
    assert status.returncode == 0, status.stderr
    assert "6 batches: 3 succeeded, 3 stopped" in status.stdout, status.stdout
    one = faice("status", run["batches"][3]["id"], *access)
    assert one.returncode == 0 and ": stopped (attempts 1)" in one.stdout, one.stdout
    ranked = faice("results", str(outdir), "--format", "json")
    assert ranked.returncode == 0, ranked.stderr
    assert json.loads(ranked.stdout)[0]["batch"] == records[3]["batchId"]


def expected_stops() -> dict[int, str]:
    """What the rule says of each batch of the grid, one at a time in grid order: the local
    engine's :class:`Stopper` fed the curves CURVE prints."""
    from faice.pipeline.stopping import Stopper
    from faice.red.metrics import MetricsSpec

    stopper = Stopper(MetricsSpec.from_mapping(METRICS))
    stops = {}
    for n in range(1, 7):
        quality = {1: 0.8, 2: 0.85, 3: 0.95, 4: 0.9}.get(n, 0.8 - 0.05 * n)
        series = [[step, float("%.6f" % (quality * (1 - 0.8 ** (step + 1))))] for step in range(8)]
        reason = stopper.check(str(n), series[:2])
        if reason:
            stops[n] = reason
        stopper.finished(str(n), series[:2] if reason else series)
    return stops


@pytest.mark.slurm
@pytest.mark.parametrize("packing", [[], ["--slurm-workers", "1"]], ids=["tasks", "packed"])
def test_the_agency_on_slurm_stops_the_batches_the_local_engine_stops(packing, make_agency, slurm, tmp_path,
                                                                       test_image):
    """The batches run on the nodes, which judge them with the series the server shares."""
    stops = expected_stops()
    assert sorted(stops) == [4, 5, 6]  # what the local engine stops (the test above)
    server = make_agency("--engine", "slurm", "--slurm-partition", slurm.partition, "--slurm-time", "00:10:00",
                         "--parallel", "1", *packing)
    _, _, run, records = run_on_agency(server, tmp_path, test_image)
    assert {n: r["state"] for n, r in records.items() if r["state"] == "stopped"} == dict.fromkeys(stops, "stopped")
    for n, message in stops.items():
        assert records[n]["failureClass"] == "stopped-early" and records[n]["message"] == message
        assert records[n]["engine"]["name"] == "slurm"
    batch = server.get(f"/batches/{run['batches'][3]['id']}").json()
    assert batch["state"] == "cancelled" and batch["attempts"] == 1 and batch["node"] == "slurm"
    # The series shared with the nodes go once nothing of the experiment is left to run.
    shared = server.dir / "work" / "slurm-stopping" / run["experimentId"]
    wait_for(lambda: not shared.exists(), 10, f"{shared} is left")
