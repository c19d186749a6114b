"""Packed Slurm runs against one array task per batch and against ``faice exec`` on the host.

Run: .venv/bin/python bench/bench_slurm_pack.py [--batches 200] [--workers 2] [--parallel 2]
     [--per-task-batches N] [--repeat 1] [--partition debug] [--image faice-test/base:bookworm]
(writes bench/results/slurm-pack.md). Needs the single-node Slurm of the test infrastructure
(``scripts/infra.sh up``), whose node is this machine, and the Docker engine.

The same sweep of trivial batches (``true``) three ways, whole ``faice exec ... --wait``
processes, one after the other:

* local:    ``faice exec --parallel P`` with the local engine (the floor: no scheduler at all)
* packed:   ``workers: K`` on Slurm: ONE sbatch call, K worker allocations pulling batches
* per task: the default Slurm mode, one array task (scheduler job) per batch, ``--parallel P``

``sbatch``/``squeue``/``scontrol``/``sacct`` are counted by wrappers first on PATH (every call
any faice process makes). Goals (issue 14): packed ≤ 2 sbatch calls and wall ≤ 1.5 × local.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
BIN = Path(sys.executable).parent
TOOLS = ("sbatch", "squeue", "scontrol", "sacct")


def red(path: Path, image: str, batches: int, engine: str, settings: dict) -> Path:
    data = {
        "redVersion": "9",
        "cli": {"cwlVersion": "v1.0", "class": "CommandLineTool", "baseCommand": ["true"],
                "inputs": {"n": {"type": "int", "inputBinding": {"position": 0}}}, "outputs": {}},
        "sweep": {"grid": {"n": list(range(batches))}},
        "inputs": {"n": "$(sweep.n)"},
        "outputs": {},
        "container": {"engine": "docker", "settings": {"image": {"url": image}, "ram": 256}},
        "execution": {"engine": engine, "settings": settings},
    }
    path.write_text(json.dumps(data))
    return path


def wrappers(directory: Path) -> Path:
    """Counting wrappers of the Slurm tools; returns the file that gets one line per call."""
    calls = directory / "calls.log"
    directory.mkdir(parents=True, exist_ok=True)
    for tool in TOOLS:
        real = shutil.which(tool)
        if real is None:
            raise SystemExit(f"{tool} not found: start the test Slurm (scripts/infra.sh up)")
        wrapper = directory / tool
        wrapper.write_text(f'#!/bin/sh\necho {tool} >> "{calls}"\nexec {real} "$@"\n')
        wrapper.chmod(0o755)
    return calls


def timed(argv: list[str], cwd: Path, env: dict[str, str], calls: Path) -> tuple[float, Counter]:
    """Wall seconds of one whole process and the Slurm tool calls made meanwhile."""
    calls.unlink(missing_ok=True)
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"benchmark command failed: {' '.join(argv)}\n{done.stderr[-3000:]}")
    counted = Counter(calls.read_text().split()) if calls.exists() else Counter()
    return seconds, counted


def check_run(outdir: Path, batches: int) -> dict:
    run = json.loads((outdir / "run.json").read_text())
    if run.get("counts") != {"succeeded": batches}:
        raise SystemExit(f"{outdir}: expected {batches} succeeded batches, got {run.get('counts')}")
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--parallel", type=int, default=2, help="local --parallel and per-task array limit")
    parser.add_argument("--per-task-batches", type=int, default=None,
                        help="batches of the one-task-per-batch case (default: --batches; 0 skips it)")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--partition", default=os.environ.get("FAICE_TEST_SLURM_PARTITION", "debug"))
    parser.add_argument("--image", default="faice-test/base:bookworm")
    args = parser.parse_args()
    per_task = args.batches if args.per_task_batches is None else args.per_task_batches

    work = Path(tempfile.mkdtemp(prefix="faice-bench-slurm-"))
    calls = wrappers(work / "bin")
    env = {**os.environ, "NO_COLOR": "1", "PATH": f"{work / 'bin'}:{os.environ['PATH']}",
           "FAICE_CACHE_DIR": str(work / "cache")}
    faice = [str(BIN / "faice")]
    local_red = red(work / "local.red.json", args.image, args.batches, "local", {})
    packed_red = red(work / "packed.red.json", args.image, args.batches, "slurm",
                     {"partition": args.partition, "workers": args.workers})
    task_red = red(work / "task.red.json", args.image, max(per_task, 1), "slurm", {"partition": args.partition})
    # Warm-up: image present, tool checked once (as on any re-run), Slurm answering.
    subprocess.run([*faice, "validate", str(local_red)], check=True, env=env, capture_output=True)

    rows: dict[str, list[tuple[float, Counter]]] = {"local": [], "packed": [], "per task": []}
    for attempt in range(args.repeat):
        out = work / f"round-{attempt}"
        out.mkdir()
        cases = [("local", [*faice, "exec", str(local_red), "--parallel", str(args.parallel), "--no-progress",
                            "--outdir", str(out / "local")], args.batches),
                 ("packed", [*faice, "exec", str(packed_red), "--wait", "--no-progress",
                             "--outdir", str(out / "packed")], args.batches)]
        if per_task:
            cases.append(("per task", [*faice, "exec", str(task_red), "--wait", "--no-progress", "--parallel",
                                       str(args.parallel), "--outdir", str(out / "task")], per_task))
        for name, argv, count in cases:
            seconds, counted = timed(argv, work, env, calls)
            check_run(Path(argv[-1]), count)
            rows[name].append((seconds, counted))
            print(f"{name}: {seconds:.1f} s, {dict(counted)}", file=sys.stderr, flush=True)

    def median(name: str) -> float:
        return statistics.median(s for s, _ in rows[name])

    def calls_of(name: str, tool: str) -> int:
        return max(c[tool] for _, c in rows[name])

    local_s, packed_s = median("local"), median("packed")
    lines = [
        "# Slurm packing: packed workers vs one task per batch vs faice exec",
        "",
        f"{args.batches} trivial batches (`true`, image {args.image}), single-node Slurm (the node is this "
        f"machine, {os.cpu_count()} CPUs), median of {args.repeat} whole `faice exec --wait` process(es); "
        f"`workers: {args.workers}`, local and per-task `--parallel {args.parallel}`. Tool calls counted by "
        "wrappers on PATH.",
        "",
        "| case | batches | wall (s) | per batch (s) | sbatch calls | scheduler jobs | squeue | scontrol |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| faice exec (local) | {args.batches} | {local_s:.1f} | {local_s / args.batches:.3f} | 0 | 0 | 0 | 0 |",
        f"| Slurm packed, workers: {args.workers} | {args.batches} | {packed_s:.1f} | {packed_s / args.batches:.3f} "
        f"| {calls_of('packed', 'sbatch')} | {args.workers} | {calls_of('packed', 'squeue')} "
        f"| {calls_of('packed', 'scontrol')} |",
    ]
    if per_task:
        task_s = median("per task")
        lines.append(
            f"| Slurm one task per batch | {per_task} | {task_s:.1f} | {task_s / per_task:.3f} "
            f"| {calls_of('per task', 'sbatch')} | {per_task} | {calls_of('per task', 'squeue')} "
            f"| {calls_of('per task', 'scontrol')} |")
    lines += [
        "",
        "| ratio | value | goal |",
        "| --- | --- | --- |",
        f"| packed wall ÷ faice exec wall | {packed_s / local_s:.2f} | ≤ 1.5 |",
        f"| packed sbatch calls | {calls_of('packed', 'sbatch')} | ≤ 2 |",
    ]
    if per_task:
        per_batch_task = median("per task") / per_task
        lines.append(f"| one-task-per-batch time per batch ÷ packed time per batch | "
                     f"{per_batch_task / (packed_s / args.batches):.2f} | (> 1: packing is faster) |")
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "slurm-pack.md").write_text(text)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
