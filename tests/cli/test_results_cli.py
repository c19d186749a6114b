"""``faice results OUTDIR``: the batches of a run ranked by the objective, in four formats, and plots.

The run directories have the layout every engine writes (run.json + batches/<id>/result.json,
outputs/, stdout.txt); the metrics in the records come from the real reader over real
training logs whose best parameters are known from the function that made them.
"""

from __future__ import annotations

import csv
import io
import json
import math
import struct
import subprocess
import sys
from pathlib import Path

from ranked_run import SPEC, make_run, winner_id

from faice.cli import main
from faice.pipeline.records import (
    BatchState,
    new_batch_record,
)
from faice.pipeline.rundir import RunDir


def faice(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "faice", *args], capture_output=True, text=True, timeout=120)


def test_table_names_the_known_winner_first(tmp_path):
    expected = make_run(tmp_path)
    done = faice("results", str(tmp_path))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    first = lines[1]
    assert first.startswith("*") and winner_id(expected) in first
    assert f"best: {winner_id(expected)} (learning_rate=0.1, batch_size=16) with val_accuracy = " in done.stdout
    order = [next(w for w in line.split() if w.startswith("b-")) for line in lines[1:11]]
    by_value = sorted(expected, key=lambda i: -expected[i]["value"])
    assert order[:8] == by_value, "the ranking follows the data"
    assert order[8:] == ["b-failed000000", "b-pending00000"], "no value: last, in run order"


def test_csv_and_json_parse_back_with_flat_columns(tmp_path):
    expected = make_run(tmp_path)
    text = faice("results", str(tmp_path), "--format", "csv").stdout
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == 10
    assert rows[0]["batch"] == winner_id(expected) and rows[0]["best"] == "True"
    assert float(rows[0]["param.learning_rate"]) == 0.1 and int(rows[0]["param.batch_size"]) == 16
    assert float(rows[0]["metric.val_accuracy"]) == expected[rows[0]["batch"]]["value"]
    assert float(rows[0]["metric.learning_rate_used"]) == 0.1, "stdout key=value metrics too"
    assert rows[-2]["state"] == "failed" and rows[-2]["failure"] == "exit-code" and rows[-2]["metric.val_accuracy"] == ""
    data = json.loads(faice("results", str(tmp_path), "--format", "json").stdout)
    assert isinstance(data, list) and [r["batch"] for r in data] == [r["batch"] for r in rows]
    assert data[0]["best"] is True and data[0]["objective"] == expected[data[0]["batch"]]["value"]
    assert set(data[0]) == set(rows[0]), "the same flat columns"
    assert data[-1]["state"] == "pending" and data[-1]["param.batch_size"] == 64


def test_markdown_and_top(tmp_path):
    expected = make_run(tmp_path)
    text = faice("results", str(tmp_path), "--format", "markdown", "--top", "3").stdout
    table = [line for line in text.splitlines() if line.startswith("|")]
    assert len(table) == 2 + 3
    assert table[2].startswith("| * | 1 | " + winner_id(expected))


def test_objective_from_the_command_line(tmp_path):
    expected = make_run(tmp_path)
    done = faice("results", str(tmp_path), "--objective", "val_accuracy", "--goal", "min", "--format", "json")
    worst = min(expected, key=lambda i: expected[i]["value"])
    assert json.loads(done.stdout)[0]["batch"] == worst


def test_objective_named_without_goal_keeps_the_recorded_goal(tmp_path):
    """Re-ranking by the recorded objective's own name must not flip a ``min`` goal to max."""
    expected = make_run(tmp_path, spec_data={**SPEC, "objective": {"name": "val_accuracy", "goal": "min"}})
    worst = min(expected, key=lambda i: expected[i]["value"])
    for args in ([], ["--objective", "val_accuracy"]):
        done = faice("results", str(tmp_path), *args, "--format", "json")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)[0]["batch"] == worst, args
    # a metric with no recorded goal is still ranked highest first
    data = json.loads(faice("results", str(tmp_path), "--objective", "accuracy", "--format", "json").stdout)
    assert data[0]["batch"] == winner_id(expected)


def _strict_json(text: str):
    """Parse as RFC 8259 JSON: Python's Infinity/NaN tokens are not JSON (jq rejects them)."""
    def refuse(token: str):
        raise ValueError(f"not standard JSON: {token}")
    return json.loads(text, parse_constant=refuse)


def test_non_finite_parameters_are_standard_json_everywhere(tmp_path):
    """``grid: {clip: [1.0, .inf, -.inf, .nan]}`` is valid RED: run.json, result.json and
    ``faice results --format json`` stay standard JSON and keep the values recognisable."""
    entries = []
    for index, clip in enumerate([1.0, math.inf, -math.inf, math.nan]):
        record = new_batch_record(f"b-clip{index:08x}", index, {"clip": clip}, run_id="r1", command=["train"],
                                  state=BatchState.SUCCEEDED)
        record.metrics = {"objective": {"name": "acc", "goal": "max", "value": 0.5 + index / 10},
                          "final": {"acc": 0.5 + index / 10}}
        RunDir(tmp_path).write_record(record)
        entries.append(record.entry())
    RunDir(tmp_path).write_run({"runId": "r1"}, entries)
    run = _strict_json((tmp_path / "run.json").read_text())
    assert [e["parameters"]["clip"] for e in run["batches"]] == [1.0, "Infinity", "-Infinity", "NaN"]
    record = _strict_json((tmp_path / "batches" / "b-clip00000001" / "result.json").read_text())
    assert record["parameters"] == {"clip": "Infinity"}
    done = faice("results", str(tmp_path), "--format", "json")
    assert done.returncode == 0, done.stderr
    rows = _strict_json(done.stdout)
    assert [r["param.clip"] for r in rows] == ["NaN", "-Infinity", "Infinity", 1.0]  # best (acc) first


def test_resume_recognises_recorded_non_finite_parameters(tmp_path):
    """run.json holds .inf as "Infinity": a batch with the same values whose input changed is
    named as such, not as new parameter values."""
    from faice.pipeline.resume import ResumePlan

    record = new_batch_record("b-clip00000000", 0, {"clip": math.inf}, run_id="r1", command=["train"],
                              state=BatchState.SUCCEEDED)
    RunDir(tmp_path).write_run({"runId": "r1"}, [record.entry()])
    plan = ResumePlan.of(RunDir(tmp_path), {})
    assert plan.why_new({"clip": math.inf}) == "its inputs or outputs changed"
    assert plan.why_new({"clip": 1.0}) == "new parameter values"


def test_metrics_read_from_the_outputs_when_records_have_none(tmp_path):
    """Runs recorded before metrics were read: --red reads them from the outputs now."""
    expected = make_run(tmp_path, record_metrics=False)
    red = tmp_path / "exp.red.yml"
    red.write_text(json.dumps({"metrics": SPEC}))
    data = json.loads(faice("results", str(tmp_path), "--red", str(red), "--format", "json").stdout)
    assert data[0]["batch"] == winner_id(expected)
    plain = faice("results", str(tmp_path))
    assert "no metrics objective recorded" in plain.stdout


def test_not_a_run_directory(tmp_path):
    done = faice("results", str(tmp_path / "nothing"))
    assert done.returncode == 1 and "not a faice run directory" in done.stderr and "Traceback" not in done.stderr


def test_plot_hint_without_matplotlib(tmp_path, monkeypatch, capsys):
    make_run(tmp_path)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib fails as when not installed
    assert main(["results", str(tmp_path), "--plot", "val_accuracy"]) == 1
    captured = capsys.readouterr()
    assert "--plot needs matplotlib" in captured.err and "pip install 'faice[plot]'" in captured.err
    assert captured.out == "", "nothing half-done"


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_plot_writes_pngs(tmp_path, optional_extra):
    optional_extra("matplotlib", "plot")
    make_run(tmp_path)
    done = faice("results", str(tmp_path), "--plot", "val_accuracy", "--plot-dir", str(tmp_path / "png"))
    assert done.returncode == 0, done.stderr
    written = sorted(p.name for p in (tmp_path / "png").iterdir())
    assert written == ["val_accuracy-steps.png", "val_accuracy-vs-batch_size.png", "val_accuracy-vs-learning_rate.png"]
    for name in written:
        width, height = _png_size(tmp_path / "png" / name)
        assert width > 100 and height > 100
    assert f"wrote {tmp_path / 'png' / 'val_accuracy-steps.png'}" in done.stderr
    missing = faice("results", str(tmp_path), "--plot", "nope", "--plot-dir", str(tmp_path / "png2"))
    assert missing.returncode == 1 and "no batch of" in missing.stderr and "val_accuracy" in missing.stderr


def test_run_json_entries_with_metrics_are_enough(tmp_path):
    """A run whose run.json entries carry the metrics summary is ranked from that one file
    (what keeps 10,000 batches fast); batches without such an entry still come from result.json."""
    from faice.pipeline.results import entry_metrics

    expected = make_run(tmp_path)
    run = json.loads((tmp_path / "run.json").read_text())
    for entry in run["batches"]:
        record = tmp_path / "batches" / entry["id"] / "result.json"
        if record.exists() and entry["state"] == "succeeded" and entry["index"] % 2 == 0:
            entry["metrics"] = entry_metrics(json.loads(record.read_text())["metrics"])
            record.unlink()  # only run.json knows this batch now
    (tmp_path / "run.json").write_text(json.dumps(run))
    data = json.loads(faice("results", str(tmp_path), "--format", "json").stdout)
    assert len(data) == 10 and data[0]["batch"] == winner_id(expected)
    assert [r["objective"] for r in data[:8]] == sorted((e["value"] for e in expected.values()), reverse=True)


def test_a_tie_for_the_best_value_is_said(tmp_path, capsys):
    """Synthetic data often ties (random-search: every draw at 0.9219): the winner line says so."""
    expected = make_run(tmp_path)
    best = winner_id(expected)
    assert main(["results", str(tmp_path)]) == 0
    assert "tied" not in capsys.readouterr().out
    other = next(b for b in expected if b != best)
    for name in ("result.json", "metrics.json", "outputs/training.csv"):
        source, target = tmp_path / "batches" / best / name, tmp_path / "batches" / other / name
        if name == "result.json":
            record = json.loads(target.read_text())
            record["metrics"] = json.loads(source.read_text())["metrics"]
            target.write_text(json.dumps(record))
        else:
            target.write_text(source.read_text())
    assert main(["results", str(tmp_path)]) == 0
    assert "; tied with 1 other batch\n" in capsys.readouterr().out


def test_a_search_s_csv_and_json_rows_say_each_trial_its_origin_and_what_stopped_it(tmp_path):
    """The trials of a search, written by the real search (Optuna's sampler, its log) and read
    back by ``faice results --format csv|json``: each row names its trial, where it came from
    (startup before the sampler learns, then sampler) and the rule that stopped it."""
    from faice.pipeline.plan import metrics_spec
    from faice.pipeline.search import Search
    from faice.red.prepare import load_experiment

    red = tmp_path / "search.json"
    red.write_text(json.dumps({
        "redVersion": "9",
        "cli": {"cwlVersion": "v1.0", "class": "CommandLineTool", "baseCommand": ["train"],
                "inputs": {"lr": {"type": "float", "inputBinding": {"position": 1}}}, "outputs": {}},
        "inputs": {"lr": 0.1},
        "sweep": {"search": {"algorithm": "tpe", "trials": 5, "seed": 3, "startupTrials": 2,
                             "parameters": {"lr": {"loguniform": [1e-4, 1.0]}}}},
        "metrics": {"objective": {"name": "acc", "goal": "max"}, "step": "step", "sources": [{"stdout": True}]},
        "container": {"engine": "docker", "settings": {"image": {"url": "example/train"}}},
        "execution": {"engine": "ccfaice", "settings": {}}}))
    experiment = load_experiment(str(red), fill=False)
    outdir = tmp_path / "run"
    search = Search(experiment, metrics_spec(experiment), outdir, resume=False)
    ends = [("succeeded", 0.5, None), ("succeeded", 0.7, None),
            ("stopped", 0.2, "stopped early by the asha rule at step 2: best acc so far 0.2 is below 0.6"),
            ("succeeded", 0.9, None), ("cancelled", None, "cancelled before the batch finished"),
            ("failed", None, "exited with code 1")]  # 6 proposals: the cancelled one does not count
    entries = []
    for state, value, message in ends:
        batch = search.propose()
        assert batch is not None
        search.tell(batch.id, state, value, [[0, value or 0.0]], message)
        record = new_batch_record(batch.id, batch.index, batch.parameters, run_id="r1", command=["train"],
                                  state=BatchState(state), message=message)
        if value is not None:
            record.metrics = {"objective": {"name": "acc", "goal": "max", "value": value}, "final": {"acc": value}}
        RunDir(outdir).write_record(record)
        entries.append({"id": batch.id, "index": batch.index, "state": state, "parameters": batch.parameters})
    search.close()
    RunDir(outdir).write_run({"runId": "r1"}, entries, phase=None)

    assert search.propose() is None, "the budget (5) is spent: the cancelled trial does not count"
    data = json.loads(faice("results", str(outdir), "--format", "json").stdout)
    assert [(r["trial"], r["origin"], r["objective"]) for r in data] == [
        (3, "sampler", 0.9), (1, "startup", 0.7), (0, "startup", 0.5), (2, "sampler", 0.2), (4, "sampler", None),
        (5, "sampler", None)]
    assert [r["stoppedBy"] for r in data] == [None, None, None, "asha at step 2", None, None]
    table = faice("results", str(outdir)).stdout
    assert ("search (tpe): 5 of 5 trials, in the order they were proposed (1 cancelled or interrupted: proposed "
            "again, not counted)") in table
    assert list(data[0])[:6] == ["rank", "best", "batch", "index", "trial", "origin"], "trial columns first"
    rows = list(csv.DictReader(io.StringIO(faice("results", str(outdir), "--format", "csv").stdout)))
    assert [(r["trial"], r["origin"], r["stoppedBy"]) for r in rows] == [
        ("3", "sampler", ""), ("1", "startup", ""), ("0", "startup", ""), ("2", "sampler", "asha at step 2"),
        ("4", "sampler", ""), ("5", "sampler", "")]
    assert list(rows[0]) == list(data[0]), "the same columns in the same order"
    # A run that is no search keeps its columns.
    make_run(tmp_path / "plain")
    plain = json.loads(faice("results", str(tmp_path / "plain"), "--format", "json").stdout)
    assert "trial" not in plain[0] and "origin" not in plain[0]
