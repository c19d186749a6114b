"""A finished, ranked sweep written through the records API, whose winner is known from the
function that made its training logs (``faice results``, the web view and the MLflow export read it)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from faice.pipeline.metrics import MetricsReader, MetricsSpec, summary
from faice.pipeline.records import BatchState, FailureClass, RunState, new_batch_record
from faice.pipeline.rundir import RunDir

SPEC = {"objective": {"name": "val_accuracy", "goal": "max"},
        "sources": [{"file": "training.csv"}, {"stdout": True}]}
LEARNING_RATES = [0.001, 0.01, 0.1, 1.0]
BATCH_SIZES = [16, 64]
WINNER = {"learning_rate": 0.1, "batch_size": 16}


def accuracy(lr: float, bs: int, epoch: int) -> float:
    """Peaks at lr=0.1 (log-distance) and prefers small batches; rises with epochs."""
    return round((0.95 - 0.08 * (math.log10(lr) + 1) ** 2 - bs / 2000) * (1 - 0.5 ** (epoch + 1)), 4)


# The fields every batch record has (schemas/faice-records.json); their values do not matter here.
RECORD_FIELDS = {"command": ["train"], "process": {"returnCode": 0, "executed": True}, "inputs": {}, "outputs": {},
                 "debugInfo": None}


def make_run(outdir: Path, *, record_metrics: bool = True, spec_data: dict = SPEC) -> dict[str, dict]:
    """A finished sweep: 8 trained batches, one failed without metrics, one still pending."""
    spec = MetricsSpec.from_mapping(spec_data)
    entries, expected = [], {}
    index = 0
    for lr in LEARNING_RATES:
        for bs in BATCH_SIZES:
            batch_id = f"b-{index:012x}"
            directory = outdir / "batches" / batch_id
            (directory / "outputs").mkdir(parents=True)
            rows = "".join(f"{e},{accuracy(lr, bs, e) + 0.01},{accuracy(lr, bs, e)}\r\n" for e in range(5))
            (directory / "outputs" / "training.csv").write_text("epoch,accuracy,val_accuracy\r\n" + rows)
            (directory / "stdout.txt").write_text(f"done learning_rate_used={lr}\n")
            record = new_batch_record(batch_id, index, {"learning_rate": lr, "batch_size": bs}, run_id="r1",
                                      command=["train"], state=BatchState.SUCCEEDED)
            record.timings = {"total": 10.0 + index}
            if record_metrics:
                result = MetricsReader.for_batch(spec, outputs_dir=directory / "outputs",
                                                 stdout_file=directory / "stdout.txt").finish()
                record.metrics = summary(result)
                (directory / "metrics.json").write_text(json.dumps(result))
            RunDir(outdir).write_record(record)
            entries.append({"id": batch_id, "index": index, "state": "succeeded", "parameters": record.parameters})
            expected[batch_id] = {"lr": lr, "bs": bs, "value": accuracy(lr, bs, 4)}
            index += 1
    failed = outdir / "batches" / "b-failed000000"
    failed.mkdir(parents=True)
    record = new_batch_record("b-failed000000", index, {"learning_rate": 10.0, "batch_size": 16}, run_id="r1",
                              command=["train"], failure_class=FailureClass.EXIT_CODE, message="exited with code 1")
    record.timings = {"total": 1.5}
    RunDir(outdir).write_record(record)
    entries.append({"id": "b-failed000000", "index": index, "state": "failed", "parameters": {"learning_rate": 10.0}})
    entries.append({"id": "b-pending00000", "index": index + 1, "state": "pending",
                    "parameters": {"learning_rate": 10.0, "batch_size": 64}})
    RunDir(outdir).write_run({"runId": "r1"}, entries, phase=RunState.RUNNING)
    return expected



def winner_id(expected: dict[str, dict]) -> str:
    return next(i for i, e in expected.items() if e["lr"] == WINNER["learning_rate"] and e["bs"] == WINNER["batch_size"])
