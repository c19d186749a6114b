"""CLI start-up: `faice --version` / `--help` wall time (goal ≤ 0.3 s) next to `cwltool --version`.

Run: .venv/bin/python bench/bench_startup.py  (writes bench/results/startup.md)
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def wall(argv: list[str], repeat: int = 7) -> float:
    """Median wall time of a whole process, in seconds."""
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> None:
    bindir = Path(sys.executable).parent
    faice = str(bindir / "faice")
    rows = [
        ("`faice --version`", wall([faice, "--version"])),
        ("`faice --help`", wall([faice, "--help"])),
        ("`faice exec --help`", wall([faice, "exec", "--help"])),
        ("`python -c pass` (floor)", wall([sys.executable, "-c", "pass"])),
    ]
    cwltool = shutil.which("cwltool", path=str(bindir)) or shutil.which("cwltool")
    if cwltool:
        rows.append(("`cwltool --version` (peer)", wall([cwltool, "--version"], repeat=3)))
    lines = ["| command | median wall (s) | goal |", "| --- | --- | --- |"]
    for name, seconds in rows:
        goal = "≤ 0.3" if name.startswith("`faice") else ""
        lines.append(f"| {name} | {seconds:.3f} | {goal} |")
    table = "\n".join(lines)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "startup.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
