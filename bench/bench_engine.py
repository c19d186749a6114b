"""Local engine speed against the floor (raw docker) and peers (cwltool, upstream cc-faice 9.3).

Run: .venv/bin/python bench/bench_engine.py [--image IMG] [--upstream-venv DIR] [--repeat N]
(writes bench/results/engine.md). Needs the Docker engine and the image (default
faice-test/base:bookworm, which has python3 for upstream's in-container agent). The upstream
venv is made with ``python3 -m venv DIR && DIR/bin/pip install cc-faice==9.3.0 'requests<2.32'``;
without it that column is skipped.

(a) one trivial batch: ``faice exec`` wall ÷ ``docker run --rm IMAGE true``   goal ≤ 2.0
(b) 10/20 trivial batches: faice vs ``cwltool --parallel`` scatter (goal ≥ 2× faster) and
    vs upstream ``faice exec`` (goal ≥ 6× faster)
(c) 4 batches of ``sleep 2`` with ``--parallel 4``                             goal ≤ 4.0 s
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
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
BIN = Path(sys.executable).parent


def wall(argv: list[str], cwd: Path, repeat: int, env: dict[str, str] | None = None) -> float:
    """Median wall time of a whole process (seconds); a failing run aborts the benchmark."""
    samples = []
    for _ in range(repeat):
        for leftover in cwd.glob("run*"):
            shutil.rmtree(leftover, ignore_errors=True)
        start = time.perf_counter()
        done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, env=env)
        samples.append(time.perf_counter() - start)
        if done.returncode != 0:
            raise SystemExit(f"benchmark command failed: {' '.join(argv)}\n{done.stderr[-2000:]}")
    return statistics.median(samples)


def engine_seconds(outdir: Path) -> float:
    """Time from LocalRun creation to the final run.json (excludes loading/validating the RED file)."""
    from datetime import datetime

    run = json.loads((outdir / "run.json").read_text())
    parse = lambda text: datetime.fromisoformat(text.replace("Z", "+00:00"))  # noqa: E731
    return (parse(run["finished"]) - parse(run["started"])).total_seconds()


def faice_red(path: Path, image: str, batches: int, script: str = "true") -> Path:
    red = {
        "redVersion": "9",
        "cli": {"cwlVersion": "v1.0", "class": "CommandLineTool", "baseCommand": ["sh", "-c", script],
                "inputs": {"n": {"type": "int", "inputBinding": {"position": 0}}}, "outputs": {}},
        "inputs": {"n": 0},
        "outputs": {},
        "container": {"engine": "docker", "settings": {"image": {"url": image}}},
        "execution": {"engine": "ccfaice", "settings": {}},
    }
    if batches > 1:
        red["sweep"] = {"grid": {"n": list(range(batches))}}
    path.write_text(json.dumps(red))
    return path


def upstream_red(path: Path, image: str, batches: int) -> Path:
    red = {
        "redVersion": "9",
        "cli": {"cwlVersion": "v1.0", "class": "CommandLineTool", "baseCommand": ["true"],
                "inputs": {"n": {"type": "int", "inputBinding": {"position": 0}}}, "outputs": {}},
        "batches": [{"inputs": {"n": i}, "outputs": {}} for i in range(batches)],
        "container": {"engine": "docker", "settings": {"image": {"url": image}}},
        "execution": {"engine": "ccfaice", "settings": {}},
    }
    path.write_text(json.dumps(red))
    return path


def cwltool_scatter(workdir: Path, image: str, batches: int) -> tuple[Path, Path]:
    tool = {"class": "CommandLineTool", "baseCommand": ["true"],
            "hints": {"DockerRequirement": {"dockerPull": image}},
            "inputs": {"n": {"type": "int", "inputBinding": {"position": 1}}}, "outputs": {}}
    workflow = {
        "cwlVersion": "v1.0", "class": "Workflow", "requirements": {"ScatterFeatureRequirement": {}},
        "inputs": {"ns": "int[]"}, "outputs": {},
        "steps": {"run": {"run": tool, "scatter": "n", "in": {"n": "ns"}, "out": []}},
    }
    (workdir / "wf.cwl").write_text(json.dumps(workflow))
    (workdir / "job.json").write_text(json.dumps({"ns": list(range(batches))}))
    return workdir / "wf.cwl", workdir / "job.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", default="faice-test/base:bookworm")
    parser.add_argument("--upstream-venv", default="/tmp/bench-ccfaice-venv")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    faice = [str(BIN / "faice"), "exec", "--no-progress", "--disable-pull"]
    cwltool = shutil.which("cwltool", path=str(BIN)) or shutil.which("cwltool")
    upstream = Path(args.upstream_venv) / "bin" / "faice"
    rows: list[tuple[str, str, str, str]] = []
    with tempfile.TemporaryDirectory(prefix="faice-bench-") as tmp:
        work = Path(tmp)
        floor = wall(["docker", "run", "--rm", args.image, "true"], work, max(5, args.repeat))
        one = faice_red(work / "one.json", args.image, 1)
        # Warm: the tool was run (or validated) before, so cwltool's check is remembered
        # (faice.cwl.checked); cold: a tool faice has never seen, checked by cwltool first.
        warm_env = dict(os.environ, FAICE_CACHE_DIR=str(work / "cache"))
        subprocess.run([str(BIN / "faice"), "validate", str(one)], env=warm_env, capture_output=True, check=True)
        single = wall([*faice, str(one), "--outdir", "run"], work, max(5, args.repeat), env=warm_env)
        engine_part = engine_seconds(work / "run")
        cold = wall([*faice, str(one), "--outdir", "run"], work, max(3, args.repeat), env=dict(os.environ, FAICE_CACHE_DIR=""))
        rows.append(("(a) 1 trivial batch", f"faice {single:.2f} s (engine {engine_part:.2f} s; a never-seen tool "
                     f"{cold:.2f} s); `docker run --rm` {floor:.2f} s",
                     f"{single / floor:.1f}× the floor ({cold / floor:.1f}× cold)", "≤ 2.0×"))
        for count in (10, 20):
            red = faice_red(work / f"sweep{count}.json", args.image, count)
            ours = wall([*faice, str(red), "--outdir", "run"], work, args.repeat)
            ours_engine = engine_seconds(work / "run")
            peers = []
            if cwltool:
                wf, job = cwltool_scatter(work, args.image, count)
                theirs = wall([cwltool, "--quiet", "--parallel", "--outdir", "run-cwl", str(wf), str(job)], work, 1)
                peers.append(f"cwltool --parallel {theirs:.2f} s ({theirs / ours:.1f}× slower; goal ≥ 2×)")
            if upstream.exists():
                ured = upstream_red(work / f"upstream{count}.json", args.image, count)
                theirs = wall([str(upstream), "exec", str(ured), "--disable-pull", "--non-interactive"], work, 1)
                peers.append(f"cc-faice 9.3 {theirs:.2f} s ({theirs / ours:.1f}× slower; goal ≥ 6×)")
            rows.append((f"(b) {count} trivial batches", f"faice {ours:.2f} s (engine {ours_engine:.2f} s)", "; ".join(peers) or "peers missing",
                         "≥ 2× / ≥ 6×"))
        sleepy = faice_red(work / "sleep.json", args.image, 4, script="sleep 2")
        four = wall([*faice, str(sleepy), "--outdir", "run", "--parallel", "4"], work, args.repeat)
        rows.append(("(c) 4 × `sleep 2`, --parallel 4", f"faice {four:.2f} s (engine {engine_seconds(work / 'run'):.2f} s)", "serial would be ≥ 8 s", "≤ 4.0 s"))
    lines = ["| case | faice | comparison | goal |", "| --- | --- | --- | --- |"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    table = "\n".join(lines)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "engine.md").write_text(
        f"Local engine, median of {args.repeat}+ runs (whole processes, image {args.image}).\n\n{table}\n")
    print(table)


if __name__ == "__main__":
    main()
