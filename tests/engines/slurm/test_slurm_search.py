"""sweep.search on packed Slurm, on the real single-node cluster: this process proposes the
trials (Optuna's TPE) while two workers run them from the claim queue, tells the sampler each
trial's objective read back from its record, and ``--resume`` with a larger budget adds exactly
the difference (nothing of faice or Optuna in the image: the values come from its stdout)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from bench import search_objective

pytestmark = [pytest.mark.slurm, pytest.mark.docker]
pytest.importorskip("optuna", reason="sweep.search needs the optional extra faice[search]")


# The objective (bench/search_objective.py), unknown to faice: best at lr = 0.03 and batch size 64.
def search_red(path: Path, image: str, partition: str, trials: int, workers: int | None = 2) -> Path:
    space = {**search_objective.SPACE, "bs": {"choice": [16, 32, 64, 128, 256]}}
    settings = {"partition": partition, "pollInterval": 2, **({"workers": workers} if workers else {})}
    red = search_objective.search_red(image, trials, pause=0.3, startupTrials=4, parameters=space, max_concurrent=2,
                                      ram=256, execution={"engine": "slurm", "settings": settings})
    path.write_text(json.dumps(red))
    return path


def faice(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "faice", *args], capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL, env={**os.environ, "NO_COLOR": "1"})


def told(outdir: Path) -> list[dict]:
    from faice.pipeline.search import read_log

    return read_log(outdir)[1]


def submissions_job(outdir: Path) -> str:
    return json.loads((outdir / "slurm" / "submissions.json").read_text())[0]["jobId"]


def most_at_once(records: list[dict]) -> int:
    """The most batches whose [started, finished] overlapped at one moment."""
    edges = sorted([(datetime.fromisoformat(r["started"]), 1) for r in records]
                   + [(datetime.fromisoformat(r["finished"]), -1) for r in records])
    running = most = 0
    for _, step in edges:
        running += step
        most = max(most, running)
    return most


def test_a_tpe_search_runs_on_packed_workers_and_resume_adds_the_difference(slurm, test_image, tmp_path):
    red = search_red(tmp_path / "search.json", test_image, slurm.partition, 8)
    outdir = tmp_path / "run"
    done = faice("exec", str(red), "--outdir", str(outdir), "--no-progress")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "a search is driven from here" in done.stderr, "without --wait it still follows: it is the sampler"
    rows = told(outdir)
    assert [r["trial"] for r in rows] == list(range(8))
    assert {r["sampler"] for r in rows} == {"complete"}, rows
    # Random proposals until 4 trials are told, then the sampler's (2 in flight: trial 5 is asked after 4 tells).
    origins = [r["origin"] for r in rows]
    assert origins[:4] == ["startup"] * 4 and origins[5:] == ["sampler"] * 3, origins
    records = []
    for row in rows:
        record = json.loads((outdir / "batches" / row["batch"] / "result.json").read_text())
        assert record["parameters"] == row["parameters"] and record["metrics"]["objective"]["value"] == row["value"]
        assert record["engine"]["name"] == "slurm" and record["engine"]["queueIndex"] == row["trial"]
        assert len(row["intermediate"]) == 3, "the series reached the sampler"
        records.append(record)
    assert {r["engine"]["worker"].split("_")[0] for r in records} == {submissions_job(outdir)}, "the workers ran them"
    assert most_at_once(records) <= 2, "maxConcurrent: 2 trials in flight"
    assert len({json.dumps(r["parameters"], sort_keys=True) for r in rows}) == 8
    submissions = json.loads((outdir / "slurm" / "submissions.json").read_text())
    assert len(submissions) == 1 and submissions[0]["batchIds"] == [r["batch"] for r in rows], "one sbatch"
    assert not list((outdir / "slurm" / "1" / "tasks").iterdir()), "no spec is left behind"

    # faice results: the trials in order and where each came from, in the table and in JSON.
    shown = faice("results", str(outdir))
    assert shown.returncode == 0, shown.stderr
    listed = shown.stdout.partition("search (tpe): 8 of 8 trials, in the order they were proposed\n")[2]
    lines = listed.strip().splitlines()[1:]
    assert [int(line.split()[0]) for line in lines] == list(range(8))
    assert [line.split()[1] for line in lines] == origins
    data = json.loads(faice("results", str(outdir), "--format", "json").stdout)
    assert sorted((r["trial"], r["origin"]) for r in data) == list(enumerate(origins))

    grown = search_red(tmp_path / "search.json", test_image, slurm.partition, 10)
    again = faice("exec", str(grown), "--outdir", str(outdir), "--resume", "--wait", "--no-progress")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "search: 8 trials reused, 2 new (trials: 10)" in again.stderr
    rows = told(outdir)
    assert [r["trial"] for r in rows] == list(range(10)) and {r["sampler"] for r in rows} == {"complete"}
    assert [r["origin"] for r in rows[8:]] == ["sampler"] * 2
    run = json.loads((outdir / "run.json").read_text())
    assert len(run["batches"]) == 10 and {b["state"] for b in run["batches"]} == {"succeeded"}
    assert len(list((outdir / "batches").iterdir())) == 10
    submissions = json.loads((outdir / "slurm" / "submissions.json").read_text())
    assert [len(s["batchIds"]) for s in submissions] == [8, 2], "the resumed search ran only the new trials"


def test_a_search_on_slurm_without_workers_submits_each_trial_as_it_is_proposed(slurm, test_image, tmp_path):
    """The same loop, one job array of one task per trial: 4 trials, 2 at a time."""
    red = search_red(tmp_path / "search.json", test_image, slurm.partition, 4, workers=None)
    outdir = tmp_path / "run"
    done = faice("exec", str(red), "--outdir", str(outdir), "--wait", "--no-progress")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "a search of 4 trials, 2 at a time, one Slurm job array per trial" in done.stderr
    rows = told(outdir)
    assert [r["trial"] for r in rows] == list(range(4)) and {r["sampler"] for r in rows} == {"complete"}
    records = [json.loads((outdir / "batches" / r["batch"] / "result.json").read_text()) for r in rows]
    assert [r["metrics"]["objective"]["value"] for r in records] == [r["value"] for r in rows]
    assert most_at_once(records) <= 2, "maxConcurrent: 2 trials in flight"
    submissions = json.loads((outdir / "slurm" / "submissions.json").read_text())
    assert [s["batchIds"] for s in submissions] == [[r["batch"]] for r in rows], "one array per trial, in order"
    assert {r["engine"]["jobId"] for r in records} == {s["jobId"] for s in submissions}
    run = json.loads((outdir / "run.json").read_text())
    assert [b["state"] for b in run["batches"]] == ["succeeded"] * 4


def test_resume_waits_for_the_workers_of_a_killed_driver_and_cancel_ends_them(slurm, test_image, tmp_path):
    """A driver killed mid-search (SIGKILL: no cancel) leaves workers running its trials:
    --resume refuses (the trials would run twice), faice cancel all --outdir ends them."""
    import signal
    import time

    from slurm_helpers import wait_for

    from faice.engines.slurm.client import queued_tasks

    red = search_red(tmp_path / "search.json", test_image, slurm.partition, 4)
    data = json.loads(red.read_text())
    data["cli"]["baseCommand"][2] = search_objective.train_script(pause=20)  # trials that outlive the test
    red.write_text(json.dumps(data))
    outdir = tmp_path / "run"
    driver = subprocess.Popen([sys.executable, "-m", "faice", "exec", str(red), "--outdir", str(outdir), "--no-progress"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: list((outdir / "slurm" / "1" / "queue" / "claimed").glob("*")), 90, "no trial was claimed")
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait(30)
    job = submissions_job(outdir)
    again = faice("exec", str(red), "--outdir", str(outdir), "--resume", "--no-progress")
    assert again.returncode == 2 and f"Slurm job {job} of this search still run" in again.stderr, again.stderr
    assert f"faice cancel all --outdir {outdir}" in again.stderr
    started = time.monotonic()
    cancelled = faice("cancel", "all", "--outdir", str(outdir))
    assert cancelled.returncode == 0 and "faice: cancelled " in cancelled.stderr, cancelled.stderr
    wait_for(lambda: not queued_tasks(job), 30, "the workers still run after faice cancel")
    assert time.monotonic() - started < 30, "not after leaseSeconds (60 s)"
    assert {json.loads(p.read_text())["state"] for p in (outdir / "batches").glob("*/result.json")} == {"cancelled"}


def test_resume_right_after_a_search_is_not_refused_by_workers_that_only_end(slurm, test_image, tmp_path):
    """A search's workers leave squeue a moment after ``faice exec`` returned (they see the
    closed queue, then Slurm ends the job), so an immediate --resume may find them listed. A
    real job array stands in for such a worker, held in squeue as long as the test needs: while its
    queue is open (a killed driver's) --resume refuses; once the driver closed it and nothing
    is left in it, the workers can only end and --resume goes on."""
    red = search_red(tmp_path / "search.json", test_image, slurm.partition, 2, workers=1)
    outdir = tmp_path / "run"
    done = faice("exec", str(red), "--outdir", str(outdir), "--no-progress")
    assert done.returncode == 0, done.stderr[-3000:]
    stand_in = subprocess.run(["sbatch", "--parsable", f"--partition={slurm.partition}", "--array=0", "--mem=16",
                               "-o", "/dev/null", "--wrap", "sleep 300"],
                              capture_output=True, text=True, timeout=30, check=True).stdout.strip().split(";")[0]
    try:
        submissions_file = outdir / "slurm" / "submissions.json"
        submissions = json.loads(submissions_file.read_text())
        submissions[0]["jobId"] = stand_in
        submissions_file.write_text(json.dumps(submissions))
        queue = outdir / "slurm" / "1" / "queue"
        (queue / "OPEN").touch()
        refused = faice("exec", str(red), "--outdir", str(outdir), "--resume", "--no-progress")
        assert refused.returncode == 2 and f"Slurm job {stand_in} of this search still run" in refused.stderr, \
            refused.stderr
        (queue / "OPEN").unlink()
        grown = search_red(tmp_path / "search.json", test_image, slurm.partition, 3, workers=1)
        again = faice("exec", str(grown), "--outdir", str(outdir), "--resume", "--no-progress")
        assert again.returncode == 0, again.stderr[-3000:]
        assert "search: 2 trials reused, 1 new (trials: 3)" in again.stderr
        assert [r["trial"] for r in told(outdir)] == [0, 1, 2]
    finally:
        subprocess.run(["scancel", stand_in], capture_output=True, timeout=30)


def test_workers_of_a_killed_driver_end_by_themselves_and_leave_no_spec(slurm, test_image, tmp_path):
    """SIGKILL of the driver and no faice cancel: the workers run what was queued, end
    ``leaseSeconds`` after its last heartbeat and take the open queue's shared spec (it may
    hold filled secrets) with them; --resume then goes on from the told trials."""
    from slurm_helpers import wait_for

    from faice.engines.slurm.client import queued_tasks

    red = search_red(tmp_path / "search.json", test_image, slurm.partition, 4, workers=1)
    data = json.loads(red.read_text())
    data["execution"]["settings"]["leaseSeconds"] = 5
    red.write_text(json.dumps(data))
    outdir = tmp_path / "run"
    tasks = outdir / "slurm" / "1" / "tasks"
    driver = subprocess.Popen([sys.executable, "-m", "faice", "exec", str(red), "--outdir", str(outdir), "--no-progress"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: list((outdir / "slurm" / "1" / "queue" / "claimed").glob("*")), 90, "no trial was claimed")
    finally:
        driver.kill()  # SIGKILL
        driver.wait(30)
    assert (tasks / "-1.json").exists(), "the queue is still open: its driver was killed"
    job = submissions_job(outdir)
    wait_for(lambda: not queued_tasks(job), 60, "the workers did not end after leaseSeconds")
    assert not list(tasks.glob("*.json")), list(tasks.iterdir())
    again = faice("exec", str(red), "--outdir", str(outdir), "--resume", "--wait", "--no-progress")
    assert again.returncode == 0, again.stderr[-3000:]
    rows = told(outdir)
    assert [r["trial"] for r in rows] == [0, 1, 2, 3] and {r["sampler"] for r in rows} == {"complete"}, rows
    # The trials the workers finished after the driver died are told from their records, not run again.
    submissions = json.loads((outdir / "slurm" / "submissions.json").read_text())
    queued_before = set(submissions[0]["batchIds"])
    assert f"search: {len(queued_before)} trials reused" in again.stderr, again.stderr
    assert not queued_before & {b for s in submissions[1:] for b in s["batchIds"]}
