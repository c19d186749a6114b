"""The main job (examples/lr-sweep, run by scripts/demo.sh) on the real engine: 12 batches
train a numpy MLP, and ``faice results`` names the winner the data says."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from docker_helpers import build_example_image

pytestmark = [pytest.mark.docker, pytest.mark.slow]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "lr-sweep"
IMAGE = "faice-examples/lr-sweep"


@pytest.fixture(scope="session")
def lr_sweep_image(docker_client, test_image) -> str:
    """The example's image as the README builds it; rebuilt only when its sources change."""
    wanted = hashlib.sha256(b"".join((EXAMPLE / n).read_bytes() for n in ("Dockerfile", "train.py"))).hexdigest()[:16]
    return build_example_image(docker_client, EXAMPLE, IMAGE, wanted, test_image)


def faice(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "faice", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_the_sweep_trains_and_results_name_the_winner(lr_sweep_image, tmp_path):
    outdir = tmp_path / "run"
    started = time.monotonic()
    run = faice("exec", "lr-sweep.red.yml", "--disable-pull", "--outdir", str(outdir), "--parallel", "2", cwd=EXAMPLE)
    seconds = time.monotonic() - started
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert seconds < 60, f"the whole sweep must take a minute or less on 2 cores, took {seconds:.0f} s"
    finals = {}
    for batch in json.loads((outdir / "run.json").read_text())["batches"]:
        # Batches end in about a second, before the median rule looks; on a loaded machine one
        # can run long enough to be stopped: it then has fewer epochs and no final.json.
        assert batch["state"] in ("succeeded", "stopped"), batch
        outputs = outdir / "batches" / batch["id"] / "outputs"
        lines = (outputs / "training.csv").read_text().splitlines()
        assert lines[0] == "epoch,accuracy,loss,val_accuracy,val_loss", "a CSVLogger header"
        if batch["state"] == "succeeded":
            assert len(lines) == 31, "one CSVLogger line per epoch"
            finals[batch["id"]] = (json.loads((outputs / "final.json").read_text())["val_accuracy"], batch)
    assert len(finals) >= 9, "the median rule stops only batches behind the others"
    ranked = faice("results", str(outdir), "--format", "json", cwd=EXAMPLE)  # the records hold the metrics
    assert ranked.returncode == 0, ranked.stderr
    rows = json.loads(ranked.stdout)[: len(finals)]  # succeeded batches first, then stopped ones
    values = [row["objective"] for row in rows]
    assert values == sorted((v for v, _ in finals.values()), reverse=True), "the ranking follows the data"
    assert [finals[row["batch"]][0] for row in rows] == values
    best = rows[0]
    assert best["best"] and (best["param.learning_rate"], best["param.batch_size"]) == (1.0, 16)
    assert sum(row["best"] for row in rows) == 1
    table = faice("results", str(outdir), cwd=EXAMPLE).stdout
    assert f"best: {best['batch']} (learning_rate=1, batch_size=16) with val_accuracy = " in table
    assert f"best: {best['batch']} (learning_rate=1, batch_size=16)" in run.stdout  # exec ends with the table


def test_the_search_example_learns_on_the_same_image(lr_sweep_image, tmp_path):
    """lr-search.red.yml: TPE + ASHA over the same train.py, 12 trials, 2 at a time."""
    pytest.importorskip("optuna", reason="sweep.search needs the optional extra faice[search]")
    outdir = tmp_path / "search"
    run = faice("exec", "lr-search.red.yml", "--disable-pull", "--outdir", str(outdir), cwd=EXAMPLE)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    batches = json.loads((outdir / "run.json").read_text())["batches"]
    assert len(batches) == 12 and {b["state"] for b in batches} <= {"succeeded", "stopped"}
    best = max((b["metrics"]["objective"]["value"] or 0.0) for b in batches)
    assert best >= 0.95, "TPE finds the region of the grid's winner (0.968)"
    table = faice("results", str(outdir), cwd=EXAMPLE).stdout
    assert "search (tpe): 12 of 12 trials, in the order they were proposed" in table
