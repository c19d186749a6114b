"""Early-stopping rules beyond the median on the real Docker engine: ASHA on a 12-batch grid."""

from __future__ import annotations

import json

import pytest

from bench.curve_objective import curve_red
from faice.pipeline.options import RunOptions
from faice.pipeline.run import run_experiment
from faice.red.prepare import load_experiment

pytestmark = pytest.mark.docker


def write_curve_red(path, image: str, early: dict | None):
    """The curve objective's 12-batch grid (n = 3 wins at every step), 16 steps of 0.4 s."""
    path.write_text(json.dumps(curve_red(image, early)))
    return path


def batch_seconds(summary) -> float:
    return sum(entry["seconds"] or 0.0 for entry in summary.to_dict()["batches"])


def winner(summary) -> int:
    entries = [e for e in summary.to_dict()["batches"] if e.get("metrics")]
    best = max(entries, key=lambda e: e["metrics"]["objective"]["value"] or 0.0)
    return int(best["parameters"]["n"])


def test_asha_stops_most_of_a_grid_and_keeps_its_winner(tmp_path, test_image):
    grid = run_experiment(load_experiment(str(write_curve_red(tmp_path / "grid.json", test_image, None))),
                          RunOptions(parallel=4), tmp_path / "grid")
    assert grid.exit_code == 0 and winner(grid) == 3
    early = {"rule": "asha", "graceSteps": 1, "reductionFactor": 3, "maxSteps": 16}
    asha = run_experiment(load_experiment(str(write_curve_red(tmp_path / "asha.json", test_image, early))),
                          RunOptions(parallel=4), tmp_path / "asha")
    assert asha.exit_code == 0 and asha.state == "succeeded"
    entries = {e["parameters"]["n"]: e for e in asha.to_dict()["batches"]}
    stopped = sorted(n for n, e in entries.items() if e["state"] == "stopped")
    assert len(stopped) >= 4, entries
    assert entries[3]["state"] == "succeeded", "the grid's winner runs to its end"
    assert all("asha rule" in entries[n]["message"] and "rung" in entries[n]["message"] for n in stopped)
    assert winner(asha) == 3
    ratio = batch_seconds(asha) / batch_seconds(grid)
    print(f"ASHA: {len(stopped)} of 12 stopped, {ratio:.0%} of the grid's batch-seconds")
    assert ratio <= 0.70, ratio
