"""``faice results`` on a 10,000-batch run directory (goal: under 2 s, whole process).

Run: .venv/bin/python bench/bench_results.py [--batches 10000] [--repeat 5] [--keep DIR]
(writes bench/results/results.md). The run directory is made synthetically with records of
the shape a local run writes (parameters of a 2-parameter sweep, timings, a stderr-sized
message, a metrics summary with 4 final metrics) and a metrics.json with a 50-step series
per batch, which ``faice results`` does not need to read for the table. Two shapes: metrics
only in each result.json (every file is read), and run.json entries that also carry the
objective and final values (``faice.pipeline.results.entry_metrics``: one file is read).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOAL_S = 2.0


def make_run(outdir: Path, batches: int, with_entry_metrics: bool) -> None:
    rng = random.Random(0)
    entries = []
    for index in range(batches):
        batch_id = f"b-{index:012x}"
        lr, bs = 10 ** rng.uniform(-4, -1), rng.choice([16, 32, 64, 128])
        acc = round(rng.uniform(0.5, 0.95), 4)
        state = "failed" if index % 97 == 0 else "succeeded"
        metrics = {
            "final": {"accuracy": acc + 0.01, "loss": 1 - acc, "val_accuracy": acc, "val_loss": 1.1 - acc},
            "best": {"step": 49, "val_accuracy": acc},
            "objective": {"name": "val_accuracy", "goal": "max", "scope": "final", "value": acc, "step": 49},
            "problems": [],
        }
        record = {
            "batchId": batch_id, "batchIndex": index, "runId": "bench", "parameters": {"learning_rate": lr, "batch_size": bs},
            "state": state, "failureClass": "exit-code" if state == "failed" else None,
            "message": "exited with code 1" if state == "failed" else None,
            "command": ["python3", "/home/cc/train.py", "--lr", str(lr), "--batch-size", str(bs)],
            "process": {"returnCode": 1 if state == "failed" else 0, "executed": True, "stderrTail": "x" * 400},
            "inputs": {"learning_rate": {"value": lr}, "batch_size": {"value": bs}}, "outputs": {},
            "timings": {"total": round(rng.uniform(5, 60), 3), "container": 4.0}, "started": "2026-01-01T00:00:00Z",
            "finished": "2026-01-01T00:01:00Z", "metrics": metrics,
        }
        directory = outdir / "batches" / batch_id
        directory.mkdir(parents=True)
        (directory / "result.json").write_text(json.dumps(record, indent=2))
        series = {"val_accuracy": [[s, acc * s / 49] for s in range(50)], "loss": [[s, 1 - acc * s / 49] for s in range(50)]}
        (directory / "metrics.json").write_text(json.dumps({**metrics, "series": series}))
        entry = {"id": batch_id, "index": index, "state": state, "parameters": record["parameters"],
                 "seconds": record["timings"]["total"]}
        if with_entry_metrics:
            entry["metrics"] = {"objective": metrics["objective"], "final": metrics["final"]}
        entries.append(entry)
    (outdir / "run.json").write_text(json.dumps({"runId": "bench", "state": "failed", "batches": entries}, indent=2))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--keep", type=Path, help="make (or reuse) the run directory here and keep it")
    args = parser.parse_args()
    faice = Path(sys.executable).with_name("faice")
    with tempfile.TemporaryDirectory(prefix="faice-bench-results-") as scratch:
        rows = []
        for fmt, shape in (("table", "records"), ("csv", "records"), ("json", "records"), ("table", "entries")):
            outdir = (args.keep or Path(scratch)) / f"run-{shape}"
            if not (outdir / "run.json").exists():
                make_run(outdir, args.batches, with_entry_metrics=shape == "entries")
            times = []
            for _ in range(args.repeat + 1):  # the first run warms the page cache
                started = time.perf_counter()
                done = subprocess.run([str(faice), "results", str(outdir), "--format", fmt],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                times.append(time.perf_counter() - started)
                if done.returncode:
                    print(done.stderr, file=sys.stderr)
                    return 1
            median = statistics.median(times[1:])
            where = "run.json entries with metrics" if shape == "entries" else "metrics in result.json only"
            rows.append(f"| `faice results --format {fmt}`, {args.batches} batches, {where} | {median:.2f} s "
                        f"| {min(times[1:]):.2f}–{max(times[1:]):.2f} s | {'met' if median < GOAL_S else 'MISSED'} (< {GOAL_S} s) |")
    table = "\n".join(["| case | median wall | range | goal |", "| --- | --- | --- | --- |", *rows])
    print(table)
    results = Path(__file__).with_name("results")
    results.mkdir(exist_ok=True)
    (results / "results.md").write_text(f"# faice results on a {args.batches}-batch run directory\n\n{table}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
