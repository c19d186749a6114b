"""A batch's metrics files are written by the (untrusted) program in the container: faice
reads them without leaving the batch's directories and without blocking."""

from __future__ import annotations

import os
import time

import pytest

from faice.pipeline.metrics import MetricsReader, MetricsSpec


def spec(*sources: dict) -> MetricsSpec:
    return MetricsSpec.from_mapping({"objective": {"name": "val_accuracy", "goal": "max"}, "sources": list(sources)})


def reader(tmp_path, *sources: dict) -> MetricsReader:
    return MetricsReader.for_batch(spec(*sources), outputs_dir=tmp_path)


def test_symlink_out_of_the_outputs_is_not_followed(tmp_path):
    secret = tmp_path / "host-secret.csv"
    secret.write_text("epoch,val_accuracy\n0,0.123\n")
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    (outputs / "training.csv").symlink_to(secret)
    result = MetricsReader.for_batch(spec({"file": "training.csv"}), outputs_dir=outputs).finish()
    assert result["series"] == {} and result["objective"]["value"] is None
    assert any("outside its directory" in p["reason"] for p in result["problems"])


def test_fifo_does_not_block(tmp_path):
    os.mkfifo(tmp_path / "training.csv")
    started = time.monotonic()
    result = reader(tmp_path, {"file": "training.csv"}).finish()
    assert time.monotonic() - started < 2
    assert any("not a regular file" in p["reason"] for p in result["problems"])


def test_input_values_cannot_lead_the_file_name_out_of_the_batch(tmp_path):
    """``$(inputs.NAME)`` is checked again after substitution: a value with .. is refused."""
    outputs = tmp_path / "b" / "outputs"
    outputs.mkdir(parents=True)
    (tmp_path / "b" / "x.csv").write_text("epoch,val_accuracy\n0,0.5\n")
    metrics = MetricsReader.for_batch(spec({"file": "$(inputs.name)"}), outputs_dir=outputs,
                                      inputs={"name": "../x.csv"})
    result = metrics.finish()
    assert result["objective"]["value"] is None
    assert any("'..' is not allowed" in p["reason"] for p in result["problems"])


@pytest.mark.foreign_records
def test_results_never_read_outside_the_run_for_hostile_batch_ids(tmp_path):
    """Batch ids come from run.json, which a remote node or agency may have written: an id
    like ../.. must not make ``faice results --red`` read metrics files outside batches/."""
    import json
    import subprocess
    import sys

    outside = tmp_path / "outputs"
    outside.mkdir()
    (outside / "training.csv").write_text("epoch,val_accuracy\n0,0.999\n")
    run = tmp_path / "run"
    (run / "batches").mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"runId": "r", "batches": [
        {"id": "../..", "index": 0, "state": "succeeded", "parameters": {}},
        {"id": "..", "index": 1, "state": "succeeded", "parameters": {}}]}))
    red = tmp_path / "m.red.json"
    red.write_text(json.dumps({"metrics": {"objective": {"name": "val_accuracy", "goal": "max"},
                                           "sources": [{"file": "training.csv"}]}}))
    done = subprocess.run([sys.executable, "-m", "faice", "results", str(run), "--red", str(red), "--format", "json"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert all(row["objective"] is None for row in json.loads(done.stdout))
