"""Text a container writes (metric names, log lines, failure messages) reaches faice's terminal
output, Markdown, CSV and MLflow only made harmless (issue 19): an escape sequence is shown,
never acted on (window title, clear screen); a ``|`` or newline keeps a Markdown table
whole; a cell starting with ``=`` is no spreadsheet formula; a name MLflow refuses does not
end the export in an internal error."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from faice.engines.display import ProgressDisplay
from faice.pipeline.events import BatchEvent
from faice.pipeline.metrics import MetricsReader, MetricsSpec, summary
from faice.pipeline.records import BatchState, FailureClass, RunState, new_batch_record
from faice.pipeline.rundir import RunDir

TITLE = "acc\x1b]0;pwned\x07"  # sets the terminal window's title
CLEAR = "loss\x1b[2J\x1b[H"  # clears the screen
TABLE_BREAKER = "a|b\nc`d`"  # ends a Markdown cell and row
FORMULA = '=HYPERLINK("http://evil.example","x")'
HOSTILE_NAMES = (TITLE, CLEAR, TABLE_BREAKER, FORMULA)
MESSAGE = "boom\x1b]0;pwned\x07\x1b[2J\r\x1b[31mall good"
ACTING = ("\x1b", "\x07", "\r", "\x9b")  # what a terminal acts on


def hostile_metrics_lines() -> str:
    lines = []
    for step in range(3):
        values = {"step": step, "score": 0.1 * step, **{name: step + i for i, name in enumerate(HOSTILE_NAMES)}}
        lines.append(json.dumps(values))
    return "\n".join(lines) + "\n"


def make_hostile_run(outdir: Path) -> None:
    """Two batches read by the real metrics reader from a file the container wrote, and one
    failed batch whose message carries escape sequences."""
    spec = MetricsSpec.from_mapping({"objective": {"name": "score", "goal": "max"},
                                     "sources": [{"file": "m.jsonl", "format": "jsonl"}]})
    entries = []
    for index, mode in enumerate(("=cmd|' /C calc'!A0", "+plain")):
        batch_id = f"b-{index:012x}"
        directory = outdir / "batches" / batch_id
        (directory / "outputs").mkdir(parents=True)
        (directory / "outputs" / "m.jsonl").write_text(hostile_metrics_lines())
        result = MetricsReader.for_batch(spec, outputs_dir=directory / "outputs").finish()
        record = new_batch_record(batch_id, index, {"mode": mode}, run_id="r1", command=["train"],
                                  state=BatchState.SUCCEEDED)
        record.metrics = summary(result)
        (directory / "metrics.json").write_text(json.dumps(result))
        RunDir(outdir).write_record(record)
        entries.append({"id": batch_id, "index": index, "state": "succeeded", "parameters": record.parameters})
    record = new_batch_record("b-failed000000", 2, {"mode": "@SUM(1)"}, run_id="r1", command=["train"],
                              failure_class=FailureClass.EXIT_CODE, message=MESSAGE)
    RunDir(outdir).write_record(record)
    entries.append({"id": "b-failed000000", "index": 2, "state": "failed", "parameters": record.parameters})
    RunDir(outdir).write_run({"runId": "r1"}, entries, phase=RunState.RUNNING)


def faice(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "faice", *args], capture_output=True, text=True, timeout=300,
                          cwd=cwd)


def assert_inert(text: str) -> None:
    for char in ACTING:
        assert char not in text, f"{char!r} reaches the output: {text!r}"


@pytest.fixture
def hostile_run(tmp_path) -> Path:
    run = tmp_path / "run"
    make_hostile_run(run)
    return run


def test_table_shows_escape_sequences_without_acting_on_them(hostile_run):
    done = faice("results", str(hostile_run))
    assert done.returncode == 0, done.stderr
    assert_inert(done.stdout)
    assert "acc\\x1b]0;pwned\\x07" in done.stdout and "loss\\x1b[2J\\x1b[H" in done.stdout
    assert "a|b\\nc`d`" in done.stdout, "the newline is shown, the name stays on its line"


def test_markdown_table_keeps_one_row_per_batch_and_its_cells(hostile_run):
    done = faice("results", str(hostile_run), "--format", "markdown")
    assert done.returncode == 0, done.stderr
    assert_inert(done.stdout)
    rows = [line for line in done.stdout.splitlines() if line.startswith("|")]
    assert len(rows) == 2 + 3, rows  # header, separator, three batches
    cells = {len(_markdown_cells(row)) for row in rows}
    assert len(cells) == 1, rows
    assert "`" not in done.stdout.replace("\\`", ""), "no code span can open"
    assert "a\\|b\\nc\\`d\\`" in rows[0]


def _markdown_cells(row: str) -> list[str]:
    cells, cell, escaped = [], "", False
    for char in row.strip()[1:-1]:
        if char == "|" and not escaped:
            cells.append(cell)
            cell = ""
        else:
            cell += char
        escaped = char == "\\" and not escaped
    return [*cells, cell]


def test_csv_cells_never_start_a_formula(hostile_run):
    done = faice("results", str(hostile_run), "--format", "csv")
    assert done.returncode == 0, done.stderr
    assert_inert(done.stdout)
    rows = list(csv.reader(io.StringIO(done.stdout)))
    assert len(rows) == 4
    for row in rows:
        for cell in row:
            assert not cell.startswith(("=", "+", "-", "@")), (cell, row)
    header = rows[0]
    assert "'=cmd|' /C calc'!A0" in [row[header.index("param.mode")] for row in rows[1:]]


def test_json_keeps_the_names_exactly_and_escaped(hostile_run):
    done = faice("results", str(hostile_run), "--format", "json")
    assert done.returncode == 0, done.stderr
    assert_inert(done.stdout)
    rows = json.loads(done.stdout)
    assert {f"metric.{name}" for name in HOSTILE_NAMES} <= set(rows[0])
    assert next(r for r in rows if r["state"] == "failed")["message"] == MESSAGE


def test_mlflow_export_maps_names_it_refuses(hostile_run, tmp_path, monkeypatch, optional_extra):
    optional_extra("mlflow", "mlflow")
    from mlflow.tracking import MlflowClient

    done = faice("results", str(hostile_run), "--to-mlflow", str(tmp_path / "mlruns"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "internal error" not in done.stderr
    assert "3 batches exported" in done.stderr
    assert "exported to MLflow as 'acc__0_pwned_'" in done.stderr
    assert_inert(done.stderr)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())
    experiment = client.get_experiment_by_name("faice run")
    runs = {r.data.tags["faice.batchId"]: r for r in client.search_runs([experiment.experiment_id])}
    first = runs["b-000000000000"]
    assert set(first.data.metrics) >= {"score", "acc__0_pwned_", "loss__2J__H", "a_b_c_d_"}
    assert [m.value for m in client.get_metric_history(first.info.run_id, "acc__0_pwned_")] == [0.0, 1.0, 2.0]


def test_failure_report_and_exec_results_table(hostile_run):
    """The report ``faice status`` and ``faice exec`` print for failed batches."""
    (hostile_run / "batches" / "b-failed000000" / "stderr.txt").write_text("Traceback\n\x1b]0;pwned\x07 died\n")
    done = faice("status", "--outdir", str(hostile_run))
    assert "failed: batch 2 b-failed000000" in done.stdout, done.stdout + done.stderr
    assert_inert(done.stdout)
    assert "stderr: \\x1b]0;pwned\\x07 died" in done.stdout
    from faice.engines.display import results_table, summary_table

    out = io.StringIO()
    summary_table({"batches": [{"id": "b-failed000000", "index": 2, "state": "failed", "message": MESSAGE,
                                "failureClass": "exit-code"}], "outdir": str(hostile_run), "runId": "r1",
                   "state": "failed", "counts": {"failed": 1}}, out)
    results_table(hostile_run, out)
    assert_inert(out.getvalue())
    assert "boom\\x1b]0;pwned\\x07" in out.getvalue()


def test_live_display_on_a_terminal(tmp_path):
    """The live display (rich, on a real pseudo-terminal) shows a hostile metric name and log
    line escaped; only rich's own cursor moves reach the terminal."""
    master, slave = os.openpty()
    received = bytearray()

    def drain() -> None:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                return
            if not chunk:
                return
            received.extend(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    with open(slave, "w", closefd=True) as stream:
        os.environ.setdefault("TERM", "xterm")
        with ProgressDisplay(2, stream=stream, live=True) as display:
            display(BatchEvent("b-1", 0, "running", phase="run"))
            display(BatchEvent("b-1", 0, "running", phase="run", metric={"name": TITLE, "step": 1, "value": 0.5},
                               log="epoch 1 \x1b[2J\x1b]0;owned\x07 done"))
            time.sleep(0.6)
            display(BatchEvent("b-2", 1, "failed", message=MESSAGE, failure_class="exit-code", seconds=1.0))
            time.sleep(0.3)
    time.sleep(0.2)
    os.close(master)
    reader.join(2)
    text = received.decode("utf-8", "replace")
    assert "\\x1b]0;pwned\\x07" in text and "\\x1b[2J" in text
    assert "\x1b]0;" not in text and "\x07" not in text and "\x1b[2J" not in text


def test_every_mapped_name_is_one_mlflow_accepts(optional_extra):
    """Checked with MLflow's own validation, over names made of the characters that matter."""
    optional_extra("mlflow", "mlflow")
    from hypothesis import given, settings
    from hypothesis import strategies as st
    from mlflow.utils.validation import _validate_metric_name, _validate_param_name

    from faice.untrusted import mlflow_name

    @settings(max_examples=2000, deadline=None)
    @given(st.text(alphabet=st.sampled_from("a./ _-:|\n\x1b\u202eé\udcff"), max_size=12) | st.text(max_size=260))
    def check(name: str) -> None:
        mapped = mlflow_name(name)
        if mapped is not None:
            _validate_metric_name(mapped)
            _validate_param_name(mapped)

    check()
    assert mlflow_name("val/loss") == "val/loss" and mlflow_name("train acc") == "train acc"
