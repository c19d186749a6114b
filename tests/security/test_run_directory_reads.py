"""The commands that read a run directory (``faice results``, ``status``, ``list``, ``logs``,
``faice ui``) against one someone else wrote or damaged: a FIFO, a device or a link out of
the run where a record or log should be. Each is refused or skipped, never read outside the
run, never blocks and never reads without end. The commands run in a child process with a
timeout, so that a regression fails instead of hanging the suite."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from werkzeug.test import Client

from faice.agency.ui.local import LocalUI
from faice.pipeline.records import BatchState, new_batch_record
from faice.pipeline.rundir import RunDir

pytestmark = pytest.mark.foreign_records  # FIFOs and devices where records are: not for the schema check
BATCH = "b-0"


def make_run(outdir: Path) -> RunDir:
    """A finished run of one batch, with its logs and metrics (no entry metrics in run.json,
    so every reader goes to the batch's files)."""
    run = RunDir(outdir)
    record = new_batch_record(BATCH, 0, {"lr": 0.1}, run_id="r", command=["x"], state=BatchState.SUCCEEDED)
    run.write_record(record)
    run.write_metrics(BATCH, {"final": {"acc": 0.5}, "series": {"acc": [[0, 0.5]]}}, redact=str)
    run.batch(BATCH).stdout.write_text("hello\n")
    run.write_run({"runId": "r"}, [{"id": BATCH, "index": 0, "state": "succeeded", "parameters": {"lr": 0.1}}])
    return run


def faice(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "faice", *args], capture_output=True, text=True, timeout=60)


def assert_clear_error(done: subprocess.CompletedProcess, *words: str) -> None:
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "internal error" not in done.stderr, done.stderr
    assert all(word in done.stderr for word in words), done.stderr


def test_a_fifo_for_run_json_is_refused_not_waited_on(tmp_path):
    run = make_run(tmp_path / "run")
    run.run_file.unlink()
    os.mkfifo(run.run_file)
    for command in (["status"], ["list"], ["status", BATCH]):
        assert_clear_error(faice(*command, "--outdir", str(run.root)), "run.json", "not a regular file")
    assert faice("results", str(run.root)).returncode == 0  # ranked from the batch records


def replace_with(path, target: str) -> None:
    """``path`` becomes a FIFO (``target`` "fifo") or a link to ``target``."""
    path.unlink()
    if target == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to(target)


@pytest.mark.parametrize("target", ["fifo", "/dev/zero", "/etc/passwd"])
def test_a_log_that_is_no_file_of_the_run_is_not_printed(tmp_path, target):
    run = make_run(tmp_path / "run")
    replace_with(run.batch(BATCH).stdout, target)
    done = faice("logs", BATCH, "--outdir", str(run.root))
    assert_clear_error(done, "stdout.txt", "expected a regular file")
    assert "root:" not in done.stdout


@pytest.mark.parametrize("target", ["fifo", "/dev/zero"])
def test_a_record_that_is_no_file_is_refused(tmp_path, target):
    run = make_run(tmp_path / "run")
    replace_with(run.batch(BATCH).record, target)
    assert_clear_error(faice("status", BATCH, "--outdir", str(run.root)), "result.json", "not a batch record")


def test_a_batch_directory_linked_out_of_the_run_is_not_read(tmp_path):
    run = make_run(tmp_path / "run")
    outside = tmp_path / "outside"
    run.batch(BATCH).path.rename(outside)
    (outside / "result.json").write_text(json.dumps({"batchId": BATCH, "state": "succeeded", "message": "OUTSIDE"}))
    run.batch(BATCH).path.symlink_to(outside)
    done = faice("status", BATCH, "--json", "--outdir", str(run.root))
    assert "OUTSIDE" not in done.stdout and done.returncode == 2, done.stdout + done.stderr
    assert "OUTSIDE" not in faice("results", str(run.root), "--format", "json").stdout
    assert run.read_metrics(BATCH) is None


def test_deeply_nested_json_is_no_record_not_a_crash(tmp_path):
    run = make_run(tmp_path / "run")
    run.run_file.write_text("[" * 200_000)
    run.batch(BATCH).record.write_text('{"a":' * 200_000)
    assert_clear_error(faice("status", "--outdir", str(run.root)), "run.json", "not a run record")
    assert run.read_record(BATCH) is None


@pytest.mark.parametrize("target", ["fifo", "/dev/zero"])
def test_a_search_log_that_is_no_file_is_no_search(tmp_path, target):
    run = make_run(tmp_path / "run")
    log = run.root / "search" / "trials.jsonl"
    log.parent.mkdir()
    if target == "fifo":
        os.mkfifo(log)
    else:
        log.symlink_to(target)
    done = faice("results", str(run.root))
    assert done.returncode == 0 and BATCH in done.stdout, done.stderr


def test_a_huge_metrics_file_is_not_parsed(tmp_path):
    """200 MB of metrics took 100 s and 7 GB to parse for ``faice results --plot``: a
    metrics.json far beyond what faice writes is left for the record's summary."""
    run = make_run(tmp_path / "run")
    with open(run.batch(BATCH).metrics, "w") as handle:
        handle.write('{"series": {"acc": [')
        handle.write(",".join(["[1,0.5]"] * (5 * 2**20)))  # 40 MiB
        handle.write("]}}")
    assert run.read_metrics(BATCH) is None  # the record holds no summary either


def test_ui_logs_never_block_or_leave_the_run(tmp_path):
    run = make_run(tmp_path / "runs" / "r1")
    batch = run.batch(BATCH)
    batch.stdout.unlink()
    batch.stdout.symlink_to("/etc/passwd")
    os.mkfifo(batch.stderr)
    client = Client(LocalUI([tmp_path / "runs"], host="127.0.0.1", port=80))
    answers: dict[str, Any] = {}

    def ask() -> None:
        for stream in ("stdout", "stderr"):
            answers[stream] = client.get(f"/api/runs/r1/batches/{BATCH}/log/{stream}")

    asking = threading.Thread(target=ask, daemon=True)  # a FIFO opened for reading would block it for good
    asking.start()
    asking.join(30)
    try:
        assert not asking.is_alive(), "faice ui blocked on a FIFO"
    finally:
        if asking.is_alive():
            with open(batch.stderr, "wb"):  # a writer that closes at once: the blocked read ends
                pass
    for stream, response in answers.items():
        assert response.status_code == 200, stream
        assert b"root:" not in response.get_data(), stream


def test_ui_shows_runs_whose_header_has_other_types(tmp_path):
    """A run.json whose counts, started or updated are no mapping or text: its pages and the
    list of runs (sorted by start) still answer, and the other runs are listed."""
    make_run(tmp_path / "runs" / "good")
    odd = make_run(tmp_path / "runs" / "odd")
    header = json.loads(odd.run_file.read_text())
    header.update(counts=[1], started={"a": 1}, updated=5)
    odd.run_file.write_text(json.dumps(header))
    client = Client(LocalUI([tmp_path / "runs"], host="127.0.0.1", port=80))
    index = client.get("/")
    assert index.status_code == 200 and b"good" in index.get_data()
    assert client.get("/runs/odd/").status_code == 200


def test_plots_never_write_through_links_of_the_run(tmp_path):
    """``faice results --plot`` writes into OUTDIR/plots: a link planted there for a PNG is
    replaced, not written through (as root, to any file); a plots/ that is a link is refused."""
    pytest.importorskip("matplotlib")
    run = make_run(tmp_path / "run")
    victim = tmp_path / "victim"
    victim.write_text("SAFE")
    (run.root / "plots").mkdir()
    (run.root / "plots" / "acc-steps.png").symlink_to(victim)
    done = faice("results", str(run.root), "--plot", "acc")
    assert done.returncode == 0, done.stderr
    assert victim.read_text() == "SAFE" and not (run.root / "plots" / "acc-steps.png").is_symlink()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.rmtree(run.root / "plots")
    (run.root / "plots").symlink_to(elsewhere)
    assert_clear_error(faice("results", str(run.root), "--plot", "acc"), "plots: a symbolic link")
    assert not any(elsewhere.iterdir())


@pytest.mark.parametrize(("entry", "where"), [
    ({"tag": "1", "runId": "r", "batchIds": [BATCH]}, "[0].jobId: expected a Slurm job id"),
    ({"jobId": "--me", "tag": "1", "runId": "r", "batchIds": [BATCH]}, "[0].jobId: expected a Slurm job id"),
    ({"jobId": "12", "tag": "../../elsewhere", "runId": "r", "batchIds": [BATCH]}, "[0].tag: expected a plain"),
    ({"jobId": "12", "tag": "1", "runId": "r", "batchIds": ["../b"]}, "[0].batchIds: expected a list of batch ids"),
])
def test_a_slurm_submissions_file_faice_did_not_write_is_refused(tmp_path, entry, where):
    """Its job ids go to squeue and scancel (``--me`` would be an option) and its tag names
    the directory whose task specs ``cancel`` deletes: checked before any of it is used."""
    run = make_run(tmp_path / "run")
    (run.root / "slurm").mkdir()
    (run.root / "slurm" / "submissions.json").write_text(json.dumps([entry]))
    for command in (["status"], ["cancel", "all"]):
        assert_clear_error(faice(*command, "--outdir", str(run.root)), "submissions.json", where)
