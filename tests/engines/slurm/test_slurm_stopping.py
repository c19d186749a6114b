"""Early stopping reaches the batches of a Slurm run on the real single-node cluster: the
workers (or array tasks) see each other's batches through the run directory (live series,
finished metrics), so ASHA stops the batches that fall behind wherever they run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bench.curve_objective import curve_red

pytestmark = [pytest.mark.slurm, pytest.mark.docker]

STEP_SECONDS = 24 * 0.4  # what a batch of the grid sleeps at least


@pytest.mark.parametrize("packing", [{"workers": 4}, {}], ids=["packed", "per-task"])
def test_asha_stops_batches_on_slurm_and_keeps_the_winner(packing, slurm, test_image, tmp_path):
    """Packed: 4 workers; per task: an array task per batch (2 at a time on this node's 2 CPUs)."""
    early = {"rule": "asha", "graceSteps": 1, "reductionFactor": 3, "maxSteps": 24}
    execution = {"engine": "slurm", "settings": {"partition": slurm.partition, "pollInterval": 2, **packing}}
    red = curve_red(test_image, early, steps=24, ram=256, execution=execution)
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
    print(f"{'packed' if packing else 'per-task'} ASHA: {len(stopped)} stopped, {seconds:.1f} batch-seconds = {seconds / grid:.0%} of the grid's")
    assert grid >= 12 * STEP_SECONDS and seconds <= 0.70 * grid, (seconds, grid)
    assert not list((outdir / "slurm").glob("*/live/*.json")), "live series are removed with their batch"
