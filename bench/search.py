#!/usr/bin/env python3
"""sweep.search and early stopping, measured (issue 22). Prints a markdown report and writes
it to bench/results/search.md.

    .venv/bin/python bench/search.py [--image faice-test/base:bookworm] [--seeds 1 2 3] [--trials 32]

(a) faice + TPE on a known objective computed in a container vs Optuna's own in-process loop
    (``study.optimize``) with the same sampler settings, budget and seed: the best value each
    reaches. One trial at a time the two propose the same points (the same sampler sees the
    same values), so the bests are equal; four at a time (constant liar) they differ by noise.
(b) ASHA vs the full grid on a 12-batch grid (the curve objective of the tests, 16 steps of
    0.4 s): batch-seconds (the sum of the batches' durations) and whether the grid's winner
    is kept.
(c) The cost of a proposal: propose + plan + tell per trial, in process, at 1,000 trials.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.curve_objective import curve_red  # noqa: E402
from bench.search_objective import objective, search_red  # noqa: E402


def faice(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "faice", *args], capture_output=True, text=True, timeout=1800)


def faice_search(image: str, trials: int, seed: int, concurrent: int, work: Path) -> tuple[float, list[float], float]:
    red = work / f"search-{seed}-{concurrent}.json"
    red.write_text(json.dumps(search_red(image, trials, seed=seed, max_concurrent=concurrent)))
    outdir = work / f"run-{seed}-{concurrent}"
    started = time.monotonic()
    done = faice("exec", str(red), "--outdir", str(outdir), "--disable-pull", "--parallel", str(concurrent))
    seconds = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    from faice.pipeline.search import read_log

    values = [row["value"] for row in read_log(outdir)[1]]
    return max(values), values, seconds


def optuna_loop(trials: int, seed: int) -> tuple[float, list[float]]:
    """Optuna's own loop with the sampler faice builds for ``algorithm: tpe``."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=10, constant_liar=True, multivariate=True)
    study = optuna.create_study(direction="maximize", sampler=sampler)

    def run(trial):
        lr = trial.suggest_float("lr", 1e-5, 10.0, log=True)
        bs = trial.suggest_categorical("bs", [8, 16, 32, 64, 128, 256, 512])
        return objective(lr, bs)

    study.optimize(run, n_trials=trials)
    return study.best_value, [t.value for t in study.trials]


def grid_run(image: str, early: dict | None, work: Path, name: str) -> tuple[float, int, int, float]:
    red = work / f"{name}.json"
    red.write_text(json.dumps(curve_red(image, early)))
    outdir = work / name
    started = time.monotonic()
    done = faice("exec", str(red), "--outdir", str(outdir), "--disable-pull", "--parallel", "4")
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    batches = json.loads((outdir / "run.json").read_text())["batches"]
    seconds = sum(b["seconds"] or 0.0 for b in batches)
    winner = max(batches, key=lambda b: (b.get("metrics") or {}).get("objective", {}).get("value") or 0.0)
    stopped = sum(1 for b in batches if b["state"] == "stopped")
    return seconds, int(winner["parameters"]["n"]), stopped, wall


def proposal_cost(trials: int) -> tuple[float, float]:
    """Mean ms per trial (propose + plan + tell, 4 in flight) over the first and the last 50."""
    from faice.pipeline.plan import metrics_spec, plan_batches
    from faice.pipeline.search import Search
    from faice.red.experiment import Experiment

    experiment = Experiment("bench.red", search_red("x", trials, seed=1, max_concurrent=4), [])
    metrics = metrics_spec(experiment)
    assert metrics is not None
    search = Search(experiment, metrics, Path(tempfile.mkdtemp()), resume=False)
    times, flight = [], []
    for _ in range(trials):
        started = time.perf_counter()
        batch = search.propose()
        assert batch is not None
        plan_batches(experiment, [batch])
        flight.append(batch)
        if len(flight) == 4:
            done = flight.pop(0)
            value = objective(done.parameters["lr"], done.parameters["bs"])
            search.tell(done.id, "succeeded", value, [[0, value / 3], [1, 2 * value / 3], [2, value]])
        times.append(time.perf_counter() - started)
    search.close()
    return 1000 * statistics.mean(times[:50]), 1000 * statistics.mean(times[-50:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", default="faice-test/base:bookworm")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--trials", type=int, default=32)
    parser.add_argument("--proposals", type=int, default=1000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="faice-bench-search-"))
    lines = ["# sweep.search and early stopping (bench/search.py)", "",
             f"{time.strftime('%Y-%m-%d')}, image {args.image}, {args.trials} trials per search", "",
             "## (a) faice + TPE (objective in a container) vs Optuna's in-process loop", "",
             "| seed | Optuna loop best | faice, 1 at a time | faice, 4 at a time | faice wall s (1 / 4) |",
             "| --- | --- | --- | --- | --- |"]
    for seed in args.seeds:
        own, _ = optuna_loop(args.trials, seed)
        one, _, wall_one = faice_search(args.image, args.trials, seed, 1, work)
        four, _, wall_four = faice_search(args.image, args.trials, seed, 4, work)
        lines.append(f"| {seed} | {own:.4f} | {one:.4f} | {four:.4f} | {wall_one:.0f} / {wall_four:.0f} |")
        print(lines[-1], flush=True)
    lines += ["", "## (b) ASHA vs the grid (12 batches, 16 steps of 0.4 s, 4 at a time)", "",
              "| run | batch-seconds | stopped | winner (n) | wall s |", "| --- | --- | --- | --- | --- |"]
    grid_seconds, grid_winner, _, grid_wall = grid_run(args.image, None, work, "grid")
    lines.append(f"| grid | {grid_seconds:.1f} | 0 | {grid_winner} | {grid_wall:.0f} |")
    for name, early in (("asha r=3", {"rule": "asha", "graceSteps": 1, "reductionFactor": 3, "maxSteps": 16}),
                        ("hyperband r=3", {"rule": "hyperband", "graceSteps": 1, "reductionFactor": 3, "maxSteps": 16}),
                        ("median", {"rule": "median", "graceSteps": 1, "minBatches": 3})):
        seconds, winner, stopped, wall = grid_run(args.image, early, work, name.replace(" ", "-").replace("=", ""))
        lines.append(f"| {name} | {seconds:.1f} ({seconds / grid_seconds:.0%}) | {stopped} | {winner} | {wall:.0f} |")
        print(lines[-1], flush=True)
    first, last = proposal_cost(args.proposals)
    lines += ["", f"## (c) proposal cost ({args.proposals} trials, TPE, 4 in flight, in process)", "",
              "| trials | ms per trial (propose + plan + tell) |", "| --- | --- |",
              f"| first 50 | {first:.1f} |", f"| last 50 (at {args.proposals}) | {last:.1f} |", ""]
    report = "\n".join(lines)
    print(report)
    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    (ROOT / "bench" / "results" / "search.md").write_text(report)


if __name__ == "__main__":
    main()
