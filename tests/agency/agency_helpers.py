"""Helpers shared by the agency tests (a module of its own: several test folders have a
``conftest`` and ``from conftest import …`` would pick whichever was imported first)."""

from __future__ import annotations

import socket
import subprocess
import sys


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def faice(*args: str, **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    kwargs.setdefault("timeout", 120)
    return subprocess.run([sys.executable, "-m", "faice", *args], **kwargs)
