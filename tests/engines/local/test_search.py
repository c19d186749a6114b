"""sweep.search on the local engine with the real Docker engine and Optuna: trials proposed while
the run goes, learned from metrics the program prints (nothing of faice or Optuna in the image)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import search_objective

pytestmark = pytest.mark.docker


# The objective (bench/search_objective.py), unknown to faice: best at lr = 0.03 and batch size 64.
def search_red(path: Path, image: str, trials: int, **search) -> Path:
    path.write_text(json.dumps(search_objective.search_red(image, trials, pause=0.05, **search)))
    return path


def faice(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "faice", *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "NO_COLOR": "1"})


def trials(outdir: Path) -> list[dict]:
    from faice.pipeline.search import read_log

    return read_log(outdir)[1]


def test_tpe_search_learns_and_resume_grows_it(tmp_path, test_image):
    red = search_red(tmp_path / "search.json", test_image, 32)
    outdir = tmp_path / "run"
    done = faice("exec", str(red), "--outdir", str(outdir), "--parallel", "8")
    assert done.returncode == 0, done.stderr
    run = json.loads((outdir / "run.json").read_text())
    assert len(run["batches"]) == 32 and {b["state"] for b in run["batches"]} == {"succeeded"}
    rows = trials(outdir)
    assert [r["trial"] for r in rows] == list(range(32))
    # Random startup proposals until 10 trials are told (with 4 in flight, up to 13 are asked by then).
    origins = [r["origin"] for r in rows]
    assert origins[:10] == ["startup"] * 10 and origins.count("startup") <= 13 and set(origins[-10:]) == {"sampler"}
    # Each trial is a batch like any other: a content-derived id, a record, metrics.
    for row in rows:
        record = json.loads((outdir / "batches" / row["batch"] / "result.json").read_text())
        assert record["parameters"] == row["parameters"] and record["metrics"]["objective"]["value"] == row["value"]
    values = [r["value"] for r in rows]
    first, last = sum(values[:10]) / 10, sum(values[-10:]) / 10
    print(f"TPE: first 10 mean {first:.3f}, last 10 mean {last:.3f}, best {max(values):.3f}")
    assert last > first + 0.2, (first, last)
    assert max(values) > 0.9
    # 4 at a time (maxConcurrent, though --parallel allows 8): the proposals in flight differ.
    assert len({json.dumps(r["parameters"], sort_keys=True) for r in rows}) >= 30

    grown = search_red(tmp_path / "search.json", test_image, 40)
    again = faice("exec", str(grown), "--outdir", str(outdir), "--resume")
    assert again.returncode == 0, again.stderr
    assert "32 trials reused, 8 new" in again.stderr
    rows = trials(outdir)
    assert [r["trial"] for r in rows] == list(range(40))
    run = json.loads((outdir / "run.json").read_text())
    assert len(run["batches"]) == 40
    assert len(list((outdir / "batches").iterdir())) == 40
    assert all(math.isfinite(r["value"]) for r in rows)
    # faice results: the ranked batches, then the trials in the order they were proposed.
    shown = faice("results", str(outdir))
    assert shown.returncode == 0, shown.stderr
    ranked, _, listed = shown.stdout.partition("search (tpe): 40 of 40 trials, in the order they were proposed\n")
    assert "best: b-" in ranked
    header, *lines = listed.strip().splitlines()
    assert header.split()[:5] == ["trial", "origin", "state", "value", "best"]
    assert [int(line.split()[0]) for line in lines] == list(range(40))
    assert [line.split()[1] for line in lines[:10]] == ["startup"] * 10 and lines[-1].split()[1] == "sampler"
    best_so_far = [float(line.split()[4]) for line in lines]
    assert best_so_far == sorted(best_so_far) and best_so_far[-1] == max(r["value"] for r in rows)


def test_trials_stopped_by_asha_teach_the_sampler(tmp_path, test_image):
    red = json.loads(search_red(tmp_path / "asha.json", test_image, 12, startupTrials=4).read_text())
    red["cli"]["baseCommand"][2] = search_objective.train_script(steps=8, pause=0.3)
    red["metrics"]["earlyStopping"] = {"rule": "asha", "graceSteps": 1, "reductionFactor": 2, "maxSteps": 8}
    (tmp_path / "asha.json").write_text(json.dumps(red))
    done = faice("exec", str(tmp_path / "asha.json"), "--outdir", str(tmp_path / "run"))
    assert done.returncode == 0, done.stderr
    rows = trials(tmp_path / "run")
    stopped = [r for r in rows if r["state"] == "stopped"]
    assert len(rows) == 12 and stopped, rows
    assert all(r["sampler"] == "pruned" and "asha rule" in r["message"] for r in stopped)
    # What the sampler was told: the stopped trials with their intermediate values (TPE ranks
    # them by their last one), the complete ones with every step.
    assert all(r["intermediate"] for r in stopped)
    complete = [r for r in rows if r["sampler"] == "complete"]
    assert complete and all(len(r["intermediate"]) == 8 for r in complete)
    shown = faice("results", str(tmp_path / "run"))
    listed = shown.stdout.partition("in the order they were proposed\n")[2]
    assert sum(1 for line in listed.splitlines() if "asha at step" in line) == len(stopped)
    pytest.importorskip("matplotlib", reason="the plots need the optional extra faice[plot]")
    plotted = faice("results", str(tmp_path / "run"), "--plot", "acc")
    assert plotted.returncode == 0, plotted.stderr
    assert (tmp_path / "run" / "plots" / "search-history.png").stat().st_size > 1000
    assert (tmp_path / "run" / "plots" / "search-importance.png").stat().st_size > 1000


def test_an_interrupted_search_proposes_its_cancelled_trials_again_on_resume(tmp_path, test_image):
    from faice.pipeline.options import RunOptions
    from faice.pipeline.run import HostRun
    from faice.red.prepare import load_experiment

    red = json.loads(search_red(tmp_path / "s.json", test_image, 8).read_text())
    red["cli"]["baseCommand"][2] = search_objective.train_script(pause=0.8)  # 2.4 s a trial: time to interrupt
    (tmp_path / "s.json").write_text(json.dumps(red))
    outdir = tmp_path / "run"
    outdir.mkdir()
    run = HostRun(load_experiment(str(tmp_path / "s.json")), RunOptions(parallel=2), outdir).start()
    import time

    deadline = time.monotonic() + 120
    while sum(1 for r in trials(outdir) if r["sampler"]) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    run.cancel()
    summary = run.wait()
    assert summary is not None and summary.state == "cancelled"
    rows = trials(outdir)
    cancelled = [r for r in rows if r["state"] == "cancelled"]
    assert cancelled and len(rows) < 8
    notes: list[str] = []
    again = HostRun(load_experiment(str(tmp_path / "s.json")), RunOptions(parallel=2, resume=True), outdir,
                    on_note=notes.append).start()
    summary = again.wait()
    assert summary is not None and summary.state == "succeeded", summary.to_dict()
    told = [r for r in trials(outdir) if r["state"] == "succeeded"]
    assert len(told) == 8
    assert {r["batch"] for r in cancelled} <= {r["batch"] for r in told if r["origin"] == "again"}
    assert any("trials reused" in note for note in notes)


@pytest.mark.parametrize("moment", ["as a trial starts", "between two trials"])
def test_a_search_cancelled_at_any_moment_ends_cancelled_and_runs_no_new_trial(tmp_path, test_image, monkeypatch,
                                                                              moment):
    """The cancel lands at the two moments a poll-based test only hits by chance: after the
    loop checked that it may start a trial but before the trial's batch exists, and while no
    trial is in flight. Either way no trial runs to its end after it, and run.json does not say
    succeeded for a search that told 1 of its 4 trials."""
    from faice.pipeline import run as run_module
    from faice.pipeline.options import RunOptions
    from faice.pipeline.run import HostRun
    from faice.red.prepare import load_experiment

    red = json.loads(search_red(tmp_path / "s.json", test_image, 4).read_text())
    red["cli"]["baseCommand"][2] = search_objective.train_script(pause=0.5)
    (tmp_path / "s.json").write_text(json.dumps(red))
    real_start, real_ended = run_module._LocalTrials.start, run_module._LocalTrials.ended

    def start(self, batch):
        if moment == "as a trial starts" and self.run.plans:  # the second trial
            self.run.cancel()
        real_start(self, batch)

    def ended(self):
        found = real_ended(self)
        if moment == "between two trials" and found:
            self.run.cancel()
        return found

    monkeypatch.setattr(run_module._LocalTrials, "start", start)
    monkeypatch.setattr(run_module._LocalTrials, "ended", ended)
    outdir = tmp_path / "run"
    outdir.mkdir()
    summary = HostRun(load_experiment(str(tmp_path / "s.json")), RunOptions(parallel=1), outdir).start().wait()
    assert summary is not None and summary.state == "cancelled", summary.to_dict()
    states = [r["state"] for r in trials(outdir)]
    assert states[0] == "succeeded" and "succeeded" not in states[1:], states
    assert len(states) <= 2
