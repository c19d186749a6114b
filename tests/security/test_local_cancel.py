"""``faice cancel RUN --outdir DIR`` signals the process run.json names as the run's owner:
run.json is only a file, so a process that is not faice is never signalled."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from faice.runtime.docker import owner_token


@pytest.mark.foreign_records
def test_cancel_never_signals_a_process_that_is_not_faice(tmp_path):
    victim = subprocess.Popen(["sleep", "120"])
    try:
        outdir = tmp_path / "run"
        outdir.mkdir()
        (outdir / "run.json").write_text(json.dumps({
            "runId": "0123456789ab", "state": "running", "owner": owner_token(victim.pid), "batches": []}))
        done = subprocess.run([sys.executable, "-m", "faice", "cancel", "0123456789ab", "--outdir", str(outdir)],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 1, done.stderr
        assert "is not a faice process: not stopped" in done.stderr
        assert victim.poll() is None, "the process run.json named was signalled"
    finally:
        victim.kill()
        victim.wait()


@pytest.mark.foreign_records
@pytest.mark.parametrize("pid", ["0", "99999999999999999999"])
def test_an_owner_pid_no_process_can_have_is_no_live_run(tmp_path, pid):
    """pid 0 asked about faice's own process group (``status --wait`` waited for good); a pid
    beyond any pid_max overflowed ``os.kill`` (an internal error)."""
    import socket

    (tmp_path / "run.json").write_text(json.dumps({
        "runId": "0123456789ab", "state": "running", "owner": f"{socket.gethostname()}:{pid}:", "batches": []}))
    for command in (["status", "--wait"], ["cancel", "all"]):
        done = subprocess.run([sys.executable, "-m", "faice", *command, "--outdir", str(tmp_path)],
                              capture_output=True, text=True, timeout=60)
        assert "internal error" not in done.stderr, done.stderr
    assert json.loads((tmp_path / "run.json").read_text())["state"] == "interrupted"
