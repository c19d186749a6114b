"""``faice logs -f`` across a batch's attempts (issue 20, review 2.11).

A retry (or ``--resume``) removes the batch directory and writes a new ``stdout.txt``; the
follower must print the new attempt from its first byte, not from the old file's offset. The
run directory is written the way a batch does (records through faice's writers, the log
file removed and recreated); ``faice logs -f`` is the real CLI in its own process.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from faice.pipeline.records import BatchState, RunState, new_batch_record, pending_entry
from faice.pipeline.rundir import RunDir

BATCH = "b-0123456789ab"


def _follower(outdir: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "faice", "logs", "-f", BATCH, "--outdir", str(outdir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _wait_for_line(follower: subprocess.Popen, text: str) -> list[str]:
    assert follower.stdout is not None
    lines = []
    for line in follower.stdout:
        lines.append(line)
        if text in line:
            return lines
    raise AssertionError(f"{text!r} never shown; got {lines}")


def _write(path: Path, text: str) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()


def _running_batch(tmp_path: Path, first: str) -> tuple[Path, Path]:
    """A run directory whose one batch runs and has printed ``first``: (outdir, stdout.txt)."""
    outdir = tmp_path / "run"
    RunDir(outdir).batch(BATCH).path.mkdir(parents=True)
    RunDir(outdir).write_run({"runId": "r1"}, [pending_entry(BATCH, 0, {}, BatchState.RUNNING)], phase=RunState.RUNNING)
    log = RunDir(outdir).batch(BATCH).path / "stdout.txt"
    _write(log, first)
    return outdir, log


def _follow_while(outdir: Path, first_line: str, change) -> str:
    """Everything ``faice logs -f`` prints while ``change()`` runs, after it showed
    ``first_line``, until the batch's record is final."""
    follower = _follower(outdir)
    try:
        shown = _wait_for_line(follower, first_line)
        change()
        time.sleep(0.5)
        RunDir(outdir).write_record(new_batch_record(BATCH, 0, {}, run_id="r1", command=["train"],
                                                    state=BatchState.SUCCEEDED))
        out, err = follower.communicate(timeout=30)
    finally:
        if follower.poll() is None:
            follower.kill()
    assert follower.returncode == 0, err
    return "".join(shown) + out


def test_follow_prints_a_retried_attempt_from_its_first_line(tmp_path):
    outdir, log = _running_batch(tmp_path, "attempt 1: loading data\nattempt 1: epoch 1\nattempt 1: half a li")
    second = "".join(f"attempt 2: line {i}\n" for i in range(1, 41))

    def retry() -> None:
        # the attempt fails; the retry removes the batch directory and starts over, and
        # prints more than the follower had read before it looks again
        shutil.rmtree(log.parent)
        log.parent.mkdir(parents=True)
        _write(log, second)
        time.sleep(1.0)
        _write(log, "attempt 2: done\n")

    assert _follow_while(outdir, "attempt 1: epoch 1", retry) == (
        "attempt 1: loading data\nattempt 1: epoch 1\nattempt 1: half a li\n" + second + "attempt 2: done\n")


def test_follow_continues_a_log_fetched_again_whole_without_repeating_it(tmp_path):
    """After a broken stream the whole log is fetched again and replaces the file: the same
    bytes, more of them; nothing is printed twice."""
    outdir, log = _running_batch(tmp_path, "line 1\nline 2\n")

    def fetched_again() -> None:
        part = log.with_name("stdout.txt.part")
        part.write_text("line 1\nline 2\nline 3\nline 4\n")
        os.replace(part, log)

    assert _follow_while(outdir, "line 2", fetched_again) == "line 1\nline 2\nline 3\nline 4\n"
