"""Idempotent submission (issue 12, item 7): a retried ``POST /red`` never runs an experiment
twice — tested with the real server behind a proxy that loses the first answer."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import agency_reds as reds
import pytest
import requests

from faice.engines.agency.client import AgencyClient
from faice.errors import EngineError


class _Proxy:
    """Forwards to the agency on 127.0.0.1; the first ``POST /red`` reaches the server (and is
    stored) but its answer is lost: replaced by ``mode`` 502, or delayed past the timeout."""

    def __init__(self, target: str, mode: str):
        self.target, self.mode, self.posts = target, mode, 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _forward(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                answer = requests.request(self.command, proxy.target + self.path, data=body, headers=headers, timeout=30)
                first = self.command == "POST" and proxy.posts == 0
                if self.command == "POST":
                    proxy.posts += 1
                if first and proxy.mode == "502":
                    self.send_response(502)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if first and proxy.mode == "slow":
                    time.sleep(3)
                try:
                    self.send_response(answer.status_code)
                    self.send_header("Content-Type", answer.headers.get("Content-Type", "application/json"))
                    self.send_header("Content-Length", str(len(answer.content)))
                    self.end_headers()
                    self.wfile.write(answer.content)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up waiting ("slow"): exactly what is tested

            do_GET = do_POST = do_DELETE = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("mode", ["502", "slow"])
def test_lost_answer_to_a_submission_gives_exactly_one_experiment(paused_agency, mode):
    server = paused_agency
    proxy = _Proxy(server.url, mode)
    try:
        client = AgencyClient(proxy.url, server.name("alice"), server.users["alice"], backoff=0.1, timeout=1.5)
        experiment = client.submit(reds.minimal(), disable_retry=False, disable_connector_validation=False)
    finally:
        proxy.close()
    assert proxy.posts == 2  # the client did retry …
    assert server.get("/experiments/count").json() == {"count": 1}  # … and the server kept one
    assert [e["_id"] for e in server.get("/experiments").json()] == [experiment]


def test_post_without_key_is_not_retried(paused_agency):
    server = paused_agency
    proxy = _Proxy(server.url, "502")
    try:
        client = AgencyClient(proxy.url, server.name("alice"), server.users["alice"], backoff=0.1)
        with pytest.raises(EngineError, match="502"):
            client.request("POST", "/red", json_body=reds.minimal())
    finally:
        proxy.close()
    assert proxy.posts == 1


def test_repeated_key_returns_the_first_experiment_per_user(paused_agency):
    server = paused_agency
    red = reds.minimal()

    def post(user: str, body) -> requests.Response:
        return requests.post(server.url + "/red", json=body, auth=server.auth(user), timeout=10,
                             headers={"Idempotency-Key": "k-123"})

    first = post("alice", red)
    assert first.status_code == 200
    assert post("alice", red).json() == first.json()
    conflict = post("alice", reds.minimal(value="other"))
    assert conflict.status_code == 409 and "k-123" in conflict.json()
    bobs = post("bob", red)  # keys are per user: bob never sees alice's experiment
    assert bobs.status_code == 200 and bobs.json() != first.json()
    assert server.get("/experiments/count").json() == {"count": 1}
    bad = requests.post(server.url + "/red", json=red, auth=server.auth("alice"), timeout=10,
                        headers={"Idempotency-Key": "x" * 201})
    assert bad.status_code == 400
