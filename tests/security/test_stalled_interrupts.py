"""Ctrl-C and SIGTERM stop a run whose connector is stuck (issue 20; code review §1.8, A.8).

The http input's server accepts the connection and never answers. Before, the access check
(preflight) ran before the main thread waited for signals, so a signal was recorded and nothing
acted on it; and a transfer noticed the stop only between two chunks, which never came: the
run went on for minutes after Ctrl-C, a second Ctrl-C and SIGTERM (HTTP read timeout 300 s,
retried), run.json said ``running``. Now the first signal ends it within seconds, the run is
recorded cancelled, and no container, temp dir or file in ``$TMPDIR`` is left.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from engine_helpers import faice_containers, run_id_of, sh_red
from slow_http import SilentServer

from faice.connectors.staging import ConnectorRequest, StagingSession
from faice.errors import ConnectorError

EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}
PROMPT_S = 5.0  # signal to exit: Python's start-up is not in it, the run's cleanup is


def stalled_red(tmp_path: Path, image: str, url: str) -> Path:
    red = sh_red(tmp_path / "r.json", 'cat "$1"', image,
                 extra_inputs={"data": {"type": "File", "inputBinding": {"position": 2}}})
    data = json.loads(red.read_text())
    data["inputs"]["data"] = {"class": "File", "connector": {"command": "http", "access": {"url": url + "/data.csv"}}}
    red.write_text(json.dumps(data))
    return red


@pytest.mark.docker
@pytest.mark.parametrize("stage, signals", [
    ("preflight", [signal.SIGINT]),
    ("preflight", [signal.SIGINT, signal.SIGINT]),  # a second Ctrl-C while the first is acted on
    ("stage-in", [signal.SIGINT]),
    ("stage-in", [signal.SIGTERM]),
], ids=["preflight-int", "preflight-int-int", "stage-in-int", "stage-in-term"])
def test_a_stalled_connector_stops_at_the_first_signal(tmp_path, docker_client, test_image, stage, signals):
    private_tmp = tmp_path / "tmp"  # everything faice leaves in $TMPDIR would show here
    private_tmp.mkdir()
    outdir = tmp_path / "run"
    with SilentServer() as server:
        command = [sys.executable, "-m", "faice", "exec", str(stalled_red(tmp_path, test_image, server.url)),
                   "--outdir", str(outdir), "--no-progress"]
        if stage == "stage-in":
            command.append("--disable-connector-validation")
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "TMPDIR": str(private_tmp)})
        try:
            deadline = time.monotonic() + 60
            while not server.connections and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert server.connections, f"faice never reached the server\n{proc.communicate(timeout=60)[1]}"
            time.sleep(0.5)  # waiting for an answer that never comes
            sent = time.monotonic()
            for number, signum in enumerate(signals):
                if number:
                    time.sleep(0.3)
                proc.send_signal(signum)
            try:
                _out, err = proc.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                pytest.fail(f"faice still runs {time.monotonic() - sent:.0f} s after the signal")
            took = time.monotonic() - sent
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == EXIT[signals[0]], err
    assert took < PROMPT_S, f"faice went on {took:.1f} s after the signal"
    assert "Traceback" not in err, err
    run = json.loads((outdir / "run.json").read_text())
    assert run["state"] == "cancelled", run
    assert not [b for b in run["batches"] if b["state"] == "running"], run["batches"]
    if stage == "stage-in":
        assert [b["state"] for b in run["batches"]] == ["cancelled"]
    assert not faice_containers(docker_client, run_id_of(outdir))
    assert not list(private_tmp.iterdir()), "left in $TMPDIR"


@pytest.mark.parametrize("operation", ["validate", "stage_in"])
def test_a_stalled_probe_or_download_ends_when_the_run_is_cancelled(tmp_path, operation):
    """The framework's part: a connector call blocked on a silent server returns at cancel."""
    cancel = threading.Event()
    with SilentServer() as server, StagingSession(tmp_path / "staging", cancel=cancel) as session:
        request = ConnectorRequest("inputs.data", "http", {"url": server.url + "/data.csv"})
        call = (lambda: session.validate(request, "receive-file")) if operation == "validate" else (
            lambda: session.stage_in(request, "File"))
        failure: list[BaseException] = []

        def run() -> None:
            try:
                call()
            except BaseException as exc:
                failure.append(exc)

        thread = threading.Thread(target=run)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.connections and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.connections
        time.sleep(0.3)
        cancel.set()
        set_at = time.monotonic()
        thread.join(10)
        took = time.monotonic() - set_at
    assert not thread.is_alive() and took < 1.0, f"went on {took:.1f} s after cancel"
    assert failure and isinstance(failure[0], ConnectorError) and "cancelled" in str(failure[0]), failure
    assert not [p for p in (tmp_path / "staging").rglob("*") if p.is_file()], "partial download left"
