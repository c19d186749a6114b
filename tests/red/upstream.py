"""Upstream cc-faice 9.3.0 for compatibility checks: what faice writes must pass upstream's
``faice schema validate red``.

The venv lives at ``${FAICE_INFRA_DIR:-/tmp/faice-infra}/upstream-venv`` and is created on
first use (about 30 s, from PyPI), then reused; a lock keeps parallel test runs from building
it twice.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path

UPSTREAM_REQUIREMENTS = ("cc-faice==9.3.0", "requests<2.32")


def upstream_venv_dir() -> Path:
    return Path(os.environ.get("FAICE_INFRA_DIR") or "/tmp/faice-infra") / "upstream-venv"


def upstream_faice() -> Path:
    """Path of upstream's ``faice`` executable, installing it first when missing."""
    venv = upstream_venv_dir()
    executable = venv / "bin" / "faice"
    marker = venv / ".complete"
    if marker.exists() and executable.exists():
        return executable
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / "upstream-venv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.exists() and executable.exists():
            return executable
        shutil.rmtree(venv, ignore_errors=True)
        python = shutil.which("python3") or sys.executable
        subprocess.run([python, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=300)
        subprocess.run(
            [str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check", *UPSTREAM_REQUIREMENTS],
            check=True,
            capture_output=True,
            timeout=600,
        )
        marker.write_text("cc-faice 9.3.0\n")
    return executable


def upstream_validate_red(path: str | os.PathLike) -> subprocess.CompletedProcess:
    """Run upstream ``faice schema validate red PATH`` (exit 0 when upstream accepts it)."""
    return subprocess.run(
        [str(upstream_faice()), "schema", "validate", "red", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
