"""``faice exec --resume`` on a run directory whose run is still going (issue 20, review 1.5).

A second process would run the running batch again into the same directory and delete its
live ``outputs/``; it must be refused while the first faice process lives, and resuming must
work as before once that run ended. Real CLI, real Docker.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from engine_helpers import sh_red

pytestmark = pytest.mark.docker


def faice(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "faice", *args], capture_output=True, text=True, timeout=180,
                          stdin=subprocess.DEVNULL, env={**os.environ, "NO_COLOR": "1"})


def _running(outdir: Path) -> bool:
    try:
        run = json.loads((outdir / "run.json").read_text())
    except (OSError, ValueError):
        return False
    return run.get("state") == "running" and run.get("counts", {}).get("running") == 1


def test_resume_of_a_live_run_is_refused_and_leaves_its_batch_alone(tmp_path, test_image):
    outputs = {"result": {"type": "File", "outputBinding": {"glob": "result.txt"}}}
    red = sh_red(tmp_path / "live.json", "echo start; sleep 8; echo done > result.txt", test_image, outputs=outputs)
    outdir = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "faice", "exec", str(red), "--outdir", str(outdir),
                              "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             stdin=subprocess.DEVNULL)
    try:
        end = time.monotonic() + 60
        while not _running(outdir):
            assert time.monotonic() < end and first.poll() is None, "the first run never started its batch"
            time.sleep(0.2)
        second = faice("exec", str(red), "--outdir", str(outdir), "--resume", "--no-progress")
        assert second.returncode == 2, second.stderr
        assert "is still going" in second.stderr and f"faice process {first.pid} " in second.stderr
        assert "Traceback" not in second.stderr
        _, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, err
    batch = next((outdir / "batches").iterdir())
    assert (batch / "outputs" / "result.txt").read_text() == "done\n"
    assert json.loads((batch / "result.json").read_text())["state"] == "succeeded"
    # once the run ended, --resume works as before: nothing to run again
    again = faice("exec", str(red), "--outdir", str(outdir), "--resume", "--no-progress")
    assert again.returncode == 0, again.stderr
    assert "resume: 1 reused, 0 new" in again.stderr


SLOW_CONNECTOR = """#!/bin/sh
# A RED input connector (CLI 1) whose access check takes a while: the run is in preflight.
case "$1" in
  cli-version) echo 1 ;;
  receive-file-validate) touch "$0.checking"; sleep 8 ;;
  receive-file) echo data > "$3" ;;
  *) echo "unsupported: $1" >&2; exit 1 ;;
esac
"""


def test_resume_while_the_run_is_still_in_preflight_is_refused(tmp_path, test_image):
    """Before run.json says anything (image pull, connector checks), the run directory is
    already the first process's: a --resume there is refused instead of running every batch
    a second time."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    connector = bin_dir / "faice-test-slowcheck"
    connector.write_text(SLOW_CONNECTOR)
    connector.chmod(0o755)
    red = sh_red(tmp_path / "slow.json", 'cat "$1"', test_image,
                 extra_inputs={"data": {"type": "File", "inputBinding": {"position": 2}}})
    data = json.loads(red.read_text())
    data["inputs"]["data"] = {"class": "File", "connector": {"command": "faice-test-slowcheck", "access": {}}}
    red.write_text(json.dumps(data))
    outdir = tmp_path / "run"
    env = {**os.environ, "NO_COLOR": "1", "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    first = subprocess.Popen([sys.executable, "-m", "faice", "exec", str(red), "--outdir", str(outdir), "--no-progress"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL, env=env)
    try:
        end = time.monotonic() + 60
        while not (bin_dir / "faice-test-slowcheck.checking").exists():
            assert time.monotonic() < end and first.poll() is None, "the first run never checked its input"
            time.sleep(0.1)
        assert not (outdir / "run.json").exists()  # nothing says "running" yet
        second = subprocess.run([sys.executable, "-m", "faice", "exec", str(red), "--outdir", str(outdir), "--resume",
                                 "--no-progress"], capture_output=True, text=True, timeout=120, env=env,
                                stdin=subprocess.DEVNULL)
        assert second.returncode == 2, second.stderr
        assert "another faice process on this host is running a run in it" in second.stderr
        _, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, err
    assert json.loads((outdir / "run.json").read_text())["counts"] == {"succeeded": 1}
