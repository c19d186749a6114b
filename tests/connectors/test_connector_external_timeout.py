"""External connector programs run with a time limit and never outlive a stop (issue 15.6)."""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

import pytest

from faice.connectors.external import KILL_GRACE
from faice.connectors.staging import ConnectorRequest, StagingSession
from faice.errors import ConnectorError

HANGING = """#!/bin/sh
if [ "$1" = cli-version ]; then echo 1; exit 0; fi
trap '' TERM
sleep 300 &
echo $! > "{pidfile}"
wait
"""


@pytest.fixture
def hanging_connector(tmp_path, monkeypatch):
    """A connector that hangs, ignores SIGTERM and leaves a child ``sleep`` behind."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    pidfile = tmp_path / "child.pid"
    name = f"hanging-connector-{uuid.uuid4().hex[:8]}"
    program = bindir / name
    program.write_text(HANGING.format(pidfile=pidfile))
    program.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return name, pidfile


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_a_hanging_program_is_stopped_at_the_timeout(hanging_connector, tmp_path, monkeypatch):
    name, pidfile = hanging_connector
    monkeypatch.setenv("FAICE_CONNECTOR_TIMEOUT", "2")
    start = time.monotonic()
    with StagingSession(tmp_path / "w") as session, pytest.raises(ConnectorError) as err:
        session.stage_in(ConnectorRequest("batches[0].inputs.f", name, {"x": 1}), "File")
    elapsed = time.monotonic() - start
    message = str(err.value)
    assert "batches[0].inputs.f" in message and "did not finish within 2 s" in message, message
    assert "FAICE_CONNECTOR_TIMEOUT" in message
    assert elapsed < 20, f"stopped after {elapsed:.1f} s"
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _alive(child):
        os.kill(child, signal.SIGKILL)
        pytest.fail("the program's child was left running")


def test_a_bad_timeout_setting_is_explained(hanging_connector, tmp_path, monkeypatch):
    name, _pidfile = hanging_connector
    monkeypatch.setenv("FAICE_CONNECTOR_TIMEOUT", "soon")
    with StagingSession(tmp_path / "w") as session, pytest.raises(ConnectorError, match="FAICE_CONNECTOR_TIMEOUT"):
        session.stage_in(ConnectorRequest("batches[0].inputs.f", name, {"x": 1}), "File")


def test_a_sigkilled_faice_leaves_no_connector_program_running(tmp_path):
    """faice is SIGKILLed while an external connector program downloads: the kernel ends the
    program too (it holds credentials and would go on writing), nothing is left running."""
    import subprocess
    import sys

    bindir = tmp_path / "bin"
    bindir.mkdir()
    pidfile = tmp_path / "program.pid"
    program = bindir / f"slow-connector-{uuid.uuid4().hex[:8]}"
    program.write_text(f'#!/bin/sh\nif [ "$1" = cli-version ]; then echo 1; exit 0; fi\necho $$ > "{pidfile}"\nexec sleep 300\n')
    program.chmod(0o755)
    script = (
        "from pathlib import Path\n"
        "from faice.connectors.staging import ConnectorRequest, StagingSession\n"
        f"session = StagingSession(Path({str(tmp_path / 'work')!r}))\n"
        f"session.stage_in(ConnectorRequest('inputs.data', {program.name!r}, {{}}), 'File')\n"
    )
    env = dict(os.environ, PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}")
    faice = subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not (pidfile.exists() and pidfile.read_text().strip()):
            assert time.monotonic() < deadline and faice.poll() is None, "the connector program never started"
            time.sleep(0.05)
        pid = int(pidfile.read_text())
        assert _alive(pid)
        faice.kill()
        faice.wait(10)
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(pid), "the connector program outlived the SIGKILLed faice"
    finally:
        if faice.poll() is None:
            faice.kill()


def test_a_hanging_program_is_stopped_when_the_run_is_cancelled(hanging_connector, tmp_path):
    """Ctrl-C/SIGTERM (the session's cancel event): the call returns at once and the program's
    whole group is ended, the child that ignores SIGTERM too. Before, the run waited for it."""
    import threading

    name, pidfile = hanging_connector
    cancel = threading.Event()
    failure: list[BaseException] = []

    def stage_in() -> None:
        with StagingSession(tmp_path / "w", cancel=cancel) as session:
            try:
                session.stage_in(ConnectorRequest("batches[0].inputs.f", name, {"x": 1}), "File")
            except BaseException as exc:
                failure.append(exc)

    thread = threading.Thread(target=stage_in)
    thread.start()
    deadline = time.monotonic() + 10
    while not (pidfile.exists() and pidfile.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.05)
    child = int(pidfile.read_text())
    cancel.set()
    set_at = time.monotonic()
    thread.join(10)
    assert time.monotonic() - set_at < 1.0, "the call went on after cancel"
    assert failure and isinstance(failure[0], ConnectorError) and "cancelled" in str(failure[0]), failure
    deadline = time.monotonic() + 2 * KILL_GRACE + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _alive(child):
        os.kill(child, signal.SIGKILL)
        pytest.fail("the program's child was left running")
