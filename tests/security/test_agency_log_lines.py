"""The server log cannot be forged or turned against its reader (issue 19): an
unauthenticated request path with ``%0a`` wrote a second, made-up log line, and ``%1b`` put
escape sequences (window title, clear screen) in front of whoever tails the log. Every
record is one line now, with control characters shown as ``\\xNN``."""

from __future__ import annotations

import http.client

FORGED = "2026-12-06 00:00:00,000 INFO faice.agency: admin logged in from 10.0.0.1"


def _raw_get(server, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    finally:
        conn.close()


def test_request_paths_neither_forge_log_lines_nor_reach_the_terminal(make_agency):
    server = make_agency("--paused")
    forged = FORGED.replace(" ", "%20")
    assert _raw_get(server, f"/x%0a{forged}%0d%1b]0;pwned%07%1b[2J") == 404
    assert _raw_get(server, f"/batches/%0a{forged}") in (400, 401, 404)
    log = server.log.read_text(errors="replace")
    assert not [line for line in log.splitlines() if line.startswith(FORGED)], log[-2000:]
    assert "\x1b" not in log and "\x07" not in log and "\r" not in log
    assert f"GET /x\\n{FORGED}\\r\\x1b]0;pwned\\x07\\x1b[2J 404" in log
