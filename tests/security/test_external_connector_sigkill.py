"""A SIGKILLed ``faice exec`` during an external connector call leaves no secret on disk
(issue 19; docs-truth item 3: a ``$TMPDIR/faice-connector-*.json`` with the password in clear
stayed, and the next start kept it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.docker]

SECRET = "ext-secret-sigkill-4711"
CONNECTOR = textwrap.dedent('''\
    #!{python}
    """RED connector CLI 1: receive-file says it started, then takes its time."""
    import json, os, sys, time
    if sys.argv[1] == "cli-version":
        print("1")
        sys.exit(0)
    access = json.load(open(sys.argv[2]))
    if sys.argv[1] == "receive-file":
        open(os.environ["FAKE_STARTED"], "w").write(sys.argv[2] + " " + str(access["password"] == {secret!r}))
        time.sleep(60)
''')


def files_holding(root: Path, secret: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and not p.is_symlink() and secret in p.read_bytes()]


def test_sigkill_during_an_external_connector_call(tmp_path, test_image):
    scratch = tmp_path / "tmp"  # faice's $TMPDIR: every temp file it makes lands here
    scratch.mkdir()
    bindir = tmp_path / "bin"
    bindir.mkdir()
    program = bindir / "red-connector-slow"
    program.write_text(CONNECTOR.format(python=sys.executable, secret=SECRET))
    program.chmod(0o755)
    started = tmp_path / "started"
    env = {**os.environ, "TMPDIR": str(scratch), "PATH": f"{bindir}:{os.environ['PATH']}",
           "FAKE_STARTED": str(started)}
    red = tmp_path / "ext.json"
    red.write_text(json.dumps({
        "redVersion": "9",
        "cli": {"cwlVersion": "v1.0", "class": "CommandLineTool", "baseCommand": ["cat"],
                "inputs": {"f": {"type": "File", "inputBinding": {"position": 0}}}, "outputs": {}},
        "inputs": {"f": {"class": "File", "connector": {"command": "red-connector-slow",
                                                        "access": {"key": "v", "password": "{{pw}}"}}}},
        "outputs": {},
        "container": {"engine": "docker", "settings": {"image": {"url": test_image}}},
        "execution": {"engine": "ccfaice", "settings": {}}}))
    variables = tmp_path / "vars.yml"
    variables.write_text(f"pw: {SECRET}\n")
    proc = subprocess.Popen([sys.executable, "-m", "faice", "exec", str(red), "--variables", str(variables),
                             "--outdir", str(tmp_path / "run"), "--no-progress", "--disable-connector-validation",
                             "--disable-pull"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None and not started.exists():
            time.sleep(0.02)
        assert started.exists(), proc.stderr.read().decode() if proc.poll() is not None else "no call began"
        time.sleep(0.2)
        assert started.read_text().endswith(" True"), "the program got the secret"
        assert files_holding(scratch, SECRET.encode()) == [], "the secret is not on disk while the call runs"
    finally:
        proc.kill()  # SIGKILL: no chance to clean up
        proc.wait(timeout=10)
    time.sleep(0.5)
    assert files_holding(scratch, SECRET.encode()) == []
    assert not list(scratch.glob("faice-connector-*"))
