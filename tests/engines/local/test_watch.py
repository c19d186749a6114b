"""Metrics, early stopping and live logs of local runs, on the real Docker engine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from engine_helpers import read, sh_red

from faice.pipeline.options import RunOptions
from faice.pipeline.run import HostRun, run_experiment
from faice.red.prepare import load_experiment
from faice.secrets import REDACTOR

pytestmark = pytest.mark.docker

# n <= 4: loss falls alike for every good batch; n >= 5: loss grows (a diverging learning rate).
TRAIN = ("python3 -u -c 'import sys, time\n"
         "n = int(sys.argv[1])\n"
         "for step in range({steps}):\n"
         "    loss = 1.0 / (step + 1) if n <= 4 else float(step + 1)\n"
         "    print(\"step=%d loss=%s\" % (step, loss))\n"
         "    time.sleep({pause})\n' \"$0\"")


def with_metrics(path: Path, metrics: dict) -> Path:
    red = json.loads(path.read_text())
    red["metrics"] = metrics
    path.write_text(json.dumps(red))
    return path


def test_metrics_are_recorded_per_batch_and_in_run_json(tmp_path, test_image):
    # The last line has no newline and one line is malformed: neither fails the batch.
    script = 'for i in 0 1 2; do echo "step=$i acc=0.$(( $0 + i ))"; done; echo "acc=oops"; printf "step=3 acc=0.9"'
    red = with_metrics(sh_red(tmp_path / "r.json", script, test_image, sweep={"grid": {"n": [1, 5]}}),
                       {"objective": {"name": "acc", "goal": "max"},
                        "sources": [{"stdout": True}]})
    summary = run_experiment(load_experiment(str(red)), RunOptions(parallel=2), tmp_path / "run")
    assert summary.exit_code == 0
    run = read(tmp_path / "run" / "run.json")
    for entry in run["batches"]:
        assert entry["metrics"]["objective"]["name"] == "acc"
        assert entry["metrics"]["final"] == {"acc": 0.9}
        bdir = tmp_path / "run" / "batches" / entry["id"]
        record = read(bdir / "result.json")
        assert record["metrics"]["objective"]["value"] == 0.9
        assert "series" not in record["metrics"]
        series = read(bdir / "metrics.json")["series"]["acc"]
        n = entry["parameters"]["n"]
        assert series[:3] == [[0, n / 10], [1, (n + 1) / 10], [2, (n + 2) / 10]]
        assert series[-1] == [3, 0.9]
    assert run["faiceVersion"] and run["redFile"] == "red.json"


def test_no_metrics_section_reads_nothing(tmp_path, test_image):
    red = sh_red(tmp_path / "r.json", "echo loss=1", test_image)
    summary = run_experiment(load_experiment(str(red)), RunOptions(), tmp_path / "run")
    (entry,) = summary.to_dict()["batches"]
    assert "metrics" not in entry
    bdir = tmp_path / "run" / "batches" / entry["id"]
    assert "metrics" not in read(bdir / "result.json") and not (bdir / "metrics.json").exists()


def test_median_rule_stops_the_known_bad_batches_only(tmp_path, test_image):
    red = with_metrics(
        sh_red(tmp_path / "r.json", TRAIN.format(steps=24, pause=0.25), test_image,
               sweep={"grid": {"n": [1, 2, 3, 4, 5, 6]}}),
        {"objective": {"name": "loss", "goal": "min"}, "step": "step",
         "earlyStopping": {"rule": "median", "graceSteps": 3, "minBatches": 3},
         "sources": [{"stdout": True}]})
    events = []
    started = time.monotonic()
    summary = run_experiment(load_experiment(str(red)), RunOptions(parallel=6, stop_grace=2), tmp_path / "run",
                             on_event=events.append)
    seconds = time.monotonic() - started
    by_n = {e["parameters"]["n"]: e for e in summary.to_dict()["batches"]}
    assert {n for n, e in by_n.items() if e["state"] == "stopped"} == {5, 6}, by_n
    assert {n for n, e in by_n.items() if e["state"] == "succeeded"} == {1, 2, 3, 4}
    assert summary.exit_code == 0 and summary.state == "succeeded"
    for n in (5, 6):
        entry = by_n[n]
        assert entry["failureClass"] == "stopped-early" and "median" in entry["message"]
        bdir = tmp_path / "run" / "batches" / entry["id"]
        record = read(bdir / "result.json")
        assert record["state"] == "stopped"
        steps = [s for s, _ in read(bdir / "metrics.json")["series"]["loss"]]
        assert 3 <= steps[-1] < 23  # stopped after the grace period, long before the end
        assert "step=3 loss=4.0" in (bdir / "stdout.txt").read_text()  # its logs are kept
    assert seconds < 24 * 0.25 + 15
    # The live display got each running batch's parameters and latest metric.
    metric_events = [e for e in events if e.metric]
    assert metric_events and all(e.parameters for e in metric_events)
    assert {e.metric["name"] for e in metric_events} == {"loss"}


def test_logs_are_written_as_they_come_and_redacted(tmp_path, test_image):
    secret = "s3cr3t-t0ken-value"
    REDACTOR.add(secret)
    # The secret is printed in two pieces (two chunks), then a line every 0.2 s.
    script = (f'printf "token={secret[:6]}"; sleep 0.5; echo "{secret[6:]}"; '
              'for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15; do echo "line $i"; sleep 0.2; done')
    red = sh_red(tmp_path / "r.json", script, test_image)
    experiment = load_experiment(str(red))
    outdir = tmp_path / "run"
    run = HostRun(experiment, RunOptions(), outdir).start()
    stdout = outdir / "batches" / experiment.batches[0].id / "stdout.txt"
    seen_while_running = ""
    deadline = time.monotonic() + 30
    while run.wait(0.1) is None and time.monotonic() < deadline:
        if stdout.exists():
            seen_while_running = stdout.read_text()
            if "line 3" in seen_while_running:
                status = read(outdir / "run.json")["batches"][0]["state"]
                assert status == "running"  # not "pending" while it runs
                break
    assert "line 3" in seen_while_running and "line 15" not in seen_while_running
    assert secret not in seen_while_running and "token=********" in seen_while_running
    summary = run.wait()
    assert summary is not None and summary.exit_code == 0
    text = stdout.read_text()
    assert secret not in text and "line 15" in text


def test_faice_logs_follow_shows_lines_within_a_second(tmp_path, test_image):
    red = sh_red(tmp_path / "r.json", 'for i in 1 2 3 4 5 6; do echo "tick $i $(date +%s.%N)"; sleep 1; done',
                 test_image)
    experiment = load_experiment(str(red))
    outdir = tmp_path / "run"
    run = HostRun(experiment, RunOptions(), outdir).start()
    batch = experiment.batches[0].id
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    follower = subprocess.Popen([sys.executable, "-m", "faice", "logs", "-f", batch, "--outdir", str(outdir)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    delays = []
    assert follower.stdout is not None
    for line in follower.stdout:
        if line.startswith("tick"):
            delays.append(time.time() - float(line.split()[2]))
    assert follower.wait(30) == 0
    assert run.wait(30) is not None
    assert len(delays) == 6  # every line, and -f ended when the batch did
    assert max(delays[1:]) < 1.0, delays  # the first may predate the follower


def test_ctrl_c_keeps_the_logs_of_cancelled_batches(tmp_path, test_image):
    red = sh_red(tmp_path / "r.json", 'echo "before $0"; echo "err $0" >&2; sleep 30', test_image,
                 sweep={"grid": {"n": [1, 2]}})
    experiment = load_experiment(str(red))
    outdir = tmp_path / "run"
    run = HostRun(experiment, RunOptions(parallel=2, stop_grace=1), outdir).start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        texts = [(outdir / "batches" / b.id / "stdout.txt") for b in experiment.batches]
        if all(p.exists() and p.read_text() for p in texts):
            break
        time.sleep(0.2)
    threading.Timer(0, run.on_signal, args=(2,)).start()
    summary = run.wait(60)
    assert summary is not None
    for batch in experiment.batches:
        bdir = outdir / "batches" / batch.id
        assert read(bdir / "result.json")["state"] == "cancelled"
        n = batch.parameters["n"]
        assert (bdir / "stdout.txt").read_text() == f"before {n}\n"
        assert (bdir / "stderr.txt").read_text() == f"err {n}\n"


def test_status_lists_local_runs_and_a_failed_run_exits_1_with_its_reason(tmp_path, test_image, monkeypatch, capsys):
    from faice.cli import main

    red = sh_red(tmp_path / "r.json", 'if [ "$0" = 2 ]; then echo "model diverged at epoch 3" >&2; exit 4; fi',
                 test_image, sweep={"grid": {"n": [1, 2]}})
    monkeypatch.chdir(tmp_path)
    summary = run_experiment(load_experiment(str(red)), RunOptions(parallel=2), Path("faice-runs") / "one")
    assert summary.exit_code == 1
    capsys.readouterr()
    assert main(["status", "--outdir", "faice-runs/one"]) == 1
    out = capsys.readouterr().out
    assert "[exit-code]: the command exited with code 4" in out and "n=2" in out
    assert "stderr: model diverged at epoch 3" in out
    assert main(["status"]) == 0  # no agency asked: the local runs
    listing = capsys.readouterr().out
    assert "faice-runs/one" in listing and "failed" in listing and "1 succeeded" in listing


def test_max_concurrent_caps_the_batches_running_at_a_time(tmp_path, test_image):
    from datetime import datetime

    red = sh_red(tmp_path / "r.json", "sleep 1", test_image, sweep={"grid": {"n": [1, 2, 3, 4]}, "maxConcurrent": 2})
    summary = run_experiment(load_experiment(str(red)), RunOptions(parallel=4), tmp_path / "run")
    assert summary.exit_code == 0
    spans = []
    for entry in summary.to_dict()["batches"]:
        record = read(tmp_path / "run" / "batches" / entry["id"] / "result.json")
        spans.append(tuple(datetime.fromisoformat(record[k].replace("Z", "+00:00")) for k in ("started", "finished")))
    most = max(sum(1 for s, f in spans if s <= start < f) for start, _ in spans)
    assert most == 2


def test_the_dry_run_shows_the_parallelism_max_concurrent_allows(tmp_path, test_image, capsys):
    from faice.cli import main

    red = sh_red(tmp_path / "r.json", "true", test_image, sweep={"grid": {"n": [1, 2, 3, 4]}, "maxConcurrent": 1})
    assert main(["exec", str(red), "--dry-run", "--parallel", "4", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["parallel"] == 1
    assert main(["exec", str(red), "--dry-run"]) == 0
    assert "parallel: 1 " in capsys.readouterr().out
