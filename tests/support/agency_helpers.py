"""Helpers shared by the agency tests (a module of its own: several test folders have a
``conftest`` and ``from conftest import …`` would pick whichever was imported first)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def faice(*args: str, **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    kwargs.setdefault("timeout", 120)
    return subprocess.run([sys.executable, "-m", "faice", *args], **kwargs)


class HookServer:
    """A real notification hook on 127.0.0.1: records every POST (time, body, Authorization)
    and answers 503 to the first ``fail_first`` of them, 200 afterwards. ``on_post(n)`` runs
    in the handler before it answers request ``n`` (0-based), to look at the agency then."""

    def __init__(self, port: int | None = None, *, fail_first: int = 0, on_post=None):
        self.received: list[dict] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                index = len(hook.received)
                status = 503 if index < fail_first else 200
                if on_post is not None:
                    on_post(index)
                hook.received.append({"time": time.time(), "body": body, "auth": self.headers.get("Authorization"), "status": status})
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.port = port or free_port()
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/notification_hook"

    def accepted(self) -> list[dict]:
        return [r for r in self.received if r["status"] == 200]

    def wait_accepted(self, count: int = 1, timeout: float = 30) -> list[dict]:
        deadline = time.time() + timeout
        while len(self.accepted()) < count and time.time() < deadline:
            time.sleep(0.1)
        return self.accepted()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
