"""What faice adds per trivial batch over the bare runtime, for each container runtime.

    REGISTRY_USER=U REGISTRY_PASSWORD=P python bench/bench_runtimes.py IMAGE [--count 40] [--parallel 4]
        [--runtimes docker podman charliecloud] [--rounds 3]

For each runtime: ``faice exec`` of a COUNT-batch sweep of ``sh -c true N`` (``--parallel``
at a time, image already prepared, so no pull is timed) against the bare runtime running the
same COUNT containers with ``xargs -P PARALLEL`` (``docker run --rm``, ``podman run --rm
--network host``, ``ch-run IMAGE_DIR --``). Rounds alternate faice and bare; the medians are
compared: (faice − bare) / COUNT is faice's overhead per batch (its records, staging dir,
output copies, cgroup, its own start-up spread over the sweep). Writes
``bench/results/runtimes.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def red_file(directory: Path, image: str, count: int, runtime: str, auth: dict | None) -> Path:
    settings: dict = {"image": {"url": image, **({"auth": auth} if auth else {})}}
    red = {
        "redVersion": "9",
        "cli": {"cwlVersion": "v1.0", "class": "CommandLineTool", "baseCommand": ["sh", "-c"],
                "inputs": {"script": {"type": "string", "inputBinding": {"position": 0}},
                           "n": {"type": "int", "inputBinding": {"position": 1}}}, "outputs": {}},
        "inputs": {"script": "true", "n": 0}, "outputs": {},
        "sweep": {"grid": {"n": list(range(count))}},
        "container": {"engine": runtime, "settings": settings},
        "execution": {"engine": "ccfaice", "settings": {}},
    }
    path = directory / f"{runtime}.red.json"
    path.write_text(json.dumps(red))
    return path


def bare_argv(runtime: str, image: str, parallel: int) -> list[str]:
    if runtime == "docker":
        run = ["docker", "run", "--rm", image, "sh", "-c", "true"]
    elif runtime == "podman":
        run = ["podman", "run", "--rm", "--network", "host", image, "sh", "-c", "true"]
    else:
        from faice.runtime.charliecloud import CharliecloudRuntime

        run = ["ch-run", CharliecloudRuntime().image_path(image), "--", "sh", "-c", "true"]
    return ["xargs", "-P", str(parallel), "-n", "1", *run]


def timed(argv: list[str], *, stdin: str | None = None, env: dict | None = None) -> float:
    started = time.perf_counter()
    result = subprocess.run(argv, input=stdin, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:4])} failed: {result.stderr[-1500:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("image")
    parser.add_argument("--count", type=int, default=40)
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runtimes", nargs="+", default=["docker", "podman", "charliecloud"])
    args = parser.parse_args()
    user = os.environ.get("REGISTRY_USER")  # the password never on a command line
    auth = {"username": user, "password": os.environ.get("REGISTRY_PASSWORD", "")} if user else None
    env = {**os.environ, "USER": os.environ.get("USER", "root"), "NO_COLOR": "1"}
    rows = []
    with tempfile.TemporaryDirectory(prefix="faice-bench-runtimes-") as work:
        directory = Path(work)
        for runtime in args.runtimes:
            red = red_file(directory, args.image, args.count, runtime, auth)
            faice = [sys.executable, "-m", "faice", "exec", str(red), "--no-progress", "--parallel", str(args.parallel)]
            timed([*faice, "--outdir", str(directory / f"{runtime}-warm")], env=env)  # prepares the image
            numbers = "\n".join(str(n) for n in range(args.count)) + "\n"
            faice_times, bare_times = [], []
            for round_ in range(args.rounds):
                faice_times.append(timed([*faice, "--outdir", str(directory / f"{runtime}-{round_}")], env=env))
                bare_times.append(timed(bare_argv(runtime, args.image, args.parallel), stdin=numbers, env=env))
            faice_s, bare_s = statistics.median(faice_times), statistics.median(bare_times)
            rows.append((runtime, faice_s, bare_s, (faice_s - bare_s) / args.count * 1000))
            print(f"{runtime}: faice {faice_s:.2f} s, bare {bare_s:.2f} s, "
                  f"{rows[-1][3]:+.1f} ms per batch", flush=True)
    lines = [f"# Per-runtime overhead per trivial batch ({args.count} batches, --parallel {args.parallel}, "
             f"median of {args.rounds} alternating rounds)", "",
             f"Image {args.image}; machine {os.uname().nodename}, {os.cpu_count()} CPUs; "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.", "",
             "| runtime | faice exec | bare runtime (xargs -P) | faice adds per batch |", "|---|---|---|---|"]
    lines += [f"| {r} | {f:.2f} s | {b:.2f} s | {d:+.0f} ms |" for r, f, b, d in rows]
    (ROOT / "bench" / "results" / "runtimes.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
