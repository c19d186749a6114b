"""Early stopping reaches the batches of a packed Slurm run on the real single-node cluster:
the workers see each other's batches through the run directory (live series, finished
metrics), so ASHA stops the batches that fall behind wherever they run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.slurm, pytest.mark.docker]

# As in tests/engines/local/test_stopping_rules.py: n = 3 is the best at every step, n >= 5 fall behind.
CURVE = ("python3 -u -c 'import sys, time\n"
         "n = int(sys.argv[1])\n"
         "quality = {1: 0.8, 2: 0.85, 3: 0.95, 4: 0.9}.get(n, 0.8 - 0.05 * n)\n"
         "for step in range(24):\n"
         "    print(\"step=%d acc=%.6f\" % (step, quality * (1 - 0.8 ** (step + 1))))\n"
         "    time.sleep(0.4)\n' \"$0\"")
STEP_SECONDS = 24 * 0.4  # what a batch of the grid sleeps at least


def test_asha_stops_batches_on_packed_workers_and_keeps_the_winner(slurm, test_image, tmp_path):
    red = {
        "redVersion": "9",
        "cli": {"cwlVersion": "v1.0", "class": "CommandLineTool", "baseCommand": ["sh", "-c"],
                "inputs": {"script": {"type": "string", "inputBinding": {"position": 0}},
                           "n": {"type": "int", "inputBinding": {"position": 1}}}, "outputs": {}},
        "inputs": {"script": CURVE, "n": 0},
        "sweep": {"grid": {"n": list(range(1, 13))}},
        "metrics": {"objective": {"name": "acc", "goal": "max"}, "step": "step", "sources": [{"stdout": True}],
                    "earlyStopping": {"rule": "asha", "graceSteps": 1, "reductionFactor": 3, "maxSteps": 24}},
        "container": {"engine": "docker", "settings": {"image": {"url": test_image}, "ram": 256}},
        "execution": {"engine": "slurm", "settings": {"partition": slurm.partition, "workers": 4, "pollInterval": 2}},
    }
    path = tmp_path / "asha.red.json"
    path.write_text(json.dumps(red))
    outdir = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "faice", "exec", str(path), "--outdir", str(outdir), "--wait",
                           "--no-progress"], capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
                          env={**os.environ, "NO_COLOR": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(p.read_text()) for p in (outdir / "batches").glob("*/result.json")]
    by_n = {r["parameters"]["n"]: r for r in records}
    assert len(by_n) == 12
    stopped = sorted(n for n, r in by_n.items() if r["state"] == "stopped")
    assert len(stopped) >= 4, {n: r["state"] for n, r in by_n.items()}
    assert by_n[3]["state"] == "succeeded" and by_n[3]["metrics"]["objective"]["value"] == max(
        r["metrics"]["objective"]["value"] for r in records), "the grid's winner runs to its end and wins"
    assert all("asha rule" in by_n[n]["message"] for n in stopped)
    assert {r["engine"]["name"] for r in records} == {"slurm"}
    seconds = sum(r["timings"]["total"] for r in records)
    # What the grid costs here: every batch as long as the ones that ran to their end did.
    full = [r["timings"]["total"] for r in records if r["state"] == "succeeded"]
    grid = 12 * sum(full) / len(full)
    print(f"packed ASHA: {len(stopped)} stopped, {seconds:.1f} batch-seconds = {seconds / grid:.0%} of the grid's")
    assert grid >= 12 * STEP_SECONDS and seconds <= 0.70 * grid, (seconds, grid)
    assert not list((outdir / "slurm").glob("*/live/*.json")), "live series are removed with their batch"
