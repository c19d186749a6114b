"""Batches really run (Docker, the local engine's pipeline): upstream's test_batch.py and
test_notification_hook.py re-done, plus secrets at rest and restart recovery."""

from __future__ import annotations

import json
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import agency_reds as reds
import docker
import pytest
from agency_helpers import free_port
from docker_helpers import labelled_containers

pytestmark = pytest.mark.docker


def _containers(batch_id: str) -> list:
    """The batch's containers (a container removed while being listed is skipped)."""
    client = docker.from_env(timeout=30)
    try:
        return labelled_containers(client, f"org.faice.batch={batch_id}")
    finally:
        client.close()


def test_minimal_succeeds_and_stdout_is_served(agency):
    batch_id = agency.batch_ids(agency.submit(reds.minimal(stdout="stdout.txt")))[0]
    batch = agency.wait_state(batch_id)
    assert batch["state"] == "succeeded", batch["history"]
    assert batch["attempts"] == 1
    assert [h["state"] for h in batch["history"]] == ["registered", "scheduled", "processing", "succeeded"]
    assert batch["history"][-1]["ccagent"]["process"]["returnCode"] == 0
    response = agency.get(f"/batches/{batch_id}/stdout")
    assert response.status_code == 200
    assert response.text == "test\n"
    assert agency.get(f"/batches/{batch_id}/other").status_code == 400
    assert batch["protectedKeysVoided"] is True


def test_failed_batch_is_retried_once_then_failed(agency):
    batch_id = agency.batch_ids(agency.submit(reds.minimal(command="unknown_command")))[0]
    batch = agency.wait_state(batch_id)
    assert batch["state"] == "failed"
    assert batch["attempts"] == 2
    states = [h["state"] for h in batch["history"]]
    assert states.count("processing") == 2 and states[-1] == "failed"
    assert batch["history"][-1]["debugInfo"]


def test_disable_retry_fails_after_one_attempt(agency):
    batch_id = agency.batch_ids(agency.submit(reds.minimal(command="false"), disableRetry="1"))[0]
    batch = agency.wait_state(batch_id)
    assert (batch["state"], batch["attempts"]) == ("failed", 1)


def test_multi_batch_all_succeed(agency):
    ids = agency.batch_ids(agency.submit(reds.multi_batch(["test_0", "test_1", "test_2"])))
    assert len(ids) == 3
    assert [agency.wait_state(i)["state"] for i in ids] == ["succeeded"] * 3
    assert [agency.get(f"/batches/{i}/stdout").text for i in ids] == ["test_0\n", "test_1\n", "test_2\n"]


def test_cancel_stops_the_running_container(agency):
    batch_id = agency.batch_ids(agency.submit(reds.sleeping(120)))[0]
    agency.wait_state(batch_id, states=("processing",))
    deadline = time.time() + 30
    while not [c for c in _containers(batch_id) if c.status == "running"] and time.time() < deadline:
        time.sleep(0.2)
    assert _containers(batch_id), "the batch's container never started"
    response = agency.delete(f"/batches/{batch_id}")
    assert response.status_code == 200 and response.json()["state"] == "cancelled"
    deadline = time.time() + 15
    while _containers(batch_id) and time.time() < deadline:
        time.sleep(0.2)
    assert _containers(batch_id) == []
    batch = agency.wait_state(batch_id)
    assert batch["state"] == "cancelled"
    assert batch["attempts"] == 1  # never retried


def test_immediate_cancel(agency):
    batch_id = agency.batch_ids(agency.submit(reds.minimal()))[0]
    assert agency.delete(f"/batches/{batch_id}").json()["state"] in ("cancelled", "succeeded")
    assert agency.wait_state(batch_id)["state"] in ("cancelled", "succeeded")


class _Recorder(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append({"auth": self.headers.get("Authorization"), "body": json.loads(body)})
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_notification_hook_gets_one_message_per_experiment(make_agency, test_image):
    _Recorder.received = []
    port = free_port()
    hook = ThreadingHTTPServer(("127.0.0.1", port), _Recorder)
    thread = threading.Thread(target=hook.serve_forever, daemon=True)
    thread.start()
    try:
        server = make_agency("--notification-hook", f"http://hookuser:hook-secret-pw@127.0.0.1:{port}/notification_hook")
        ids = server.batch_ids(server.submit(reds.multi_batch(["a", "b", "c"])))
        final = {i: server.wait_state(i)["state"] for i in ids}
        deadline = time.time() + 20
        while not _Recorder.received and time.time() < deadline:
            time.sleep(0.2)
        time.sleep(2.5)  # a duplicate would arrive within the next dispatcher rounds
        assert len(_Recorder.received) == 1
        message = _Recorder.received[0]
        assert sorted(message["body"]["batches"], key=lambda b: b["batchId"]) == sorted(
            [{"batchId": i, "state": s} for i, s in final.items()], key=lambda b: b["batchId"]
        )
        assert message["auth"].startswith("Basic ")
        assert "hook-secret-pw" not in server.log.read_text()
    finally:
        hook.shutdown()
        hook.server_close()


def test_secrets_are_encrypted_at_rest_and_deleted(make_agency, test_image):
    server = make_agency("--paused")
    red = reds.minimal()
    secret = "ssh-Secret-" + "7" * 12
    red["inputs"]["some_file"] = {
        "class": "File",
        "connector": {"command": "red-connector-ssh", "access": {"host": "127.0.0.1", "port": 22, "filePath": "/x", "auth": {"username": "u", "password": secret}}},
    }
    red["cli"]["inputs"]["some_file"] = {"type": "File", "inputBinding": {"position": 1}}
    red["container"]["settings"]["image"]["auth"] = {"username": "u", "password": secret + "-image"}
    experiment_id = server.submit(red)
    batch_id = server.batch_ids(experiment_id)[0]
    db_file = server.dir / "agency.db"

    def stored_bytes() -> bytes:
        return b"".join(p.read_bytes() for p in server.dir.glob("agency.db*"))

    assert secret.encode() not in stored_bytes()
    batch = server.get(f"/batches/{batch_id}").json()
    assert secret not in json.dumps(batch) and secret not in server.get(f"/experiments/{experiment_id}").text
    import sqlite3

    conn = sqlite3.connect(db_file)
    assert conn.execute("SELECT COUNT(*) FROM secrets").fetchone()[0] == 2
    assert (server.dir / "agency.key").stat().st_mode & 0o777 == 0o600
    server.delete(f"/batches/{batch_id}")
    server.stop()  # recovery at the next start voids the secrets of final batches too
    server.start()
    deadline = time.time() + 10
    while conn.execute("SELECT COUNT(*) FROM secrets").fetchone()[0] and time.time() < deadline:
        time.sleep(0.2)
    assert conn.execute("SELECT COUNT(*) FROM secrets").fetchone()[0] == 0
    conn.close()
    assert server.get(f"/batches/{batch_id}").json()["protectedKeysVoided"] is True
    assert secret not in server.log.read_text()


def test_restart_loses_nothing_and_retries_running_batches(make_agency, test_image):
    server = make_agency("--parallel", "1")
    running = server.batch_ids(server.submit(reds.sleeping(5)))[0]
    queued = server.batch_ids(server.submit(reds.minimal(value="queued")))[0]
    server.wait_state(running, states=("processing",))
    deadline = time.time() + 20
    while not _containers(running) and time.time() < deadline:
        time.sleep(0.1)
    server.stop(signal.SIGKILL)  # no chance to clean up: the container is left running
    left = _containers(running)
    assert left
    server.start()
    first = server.wait_state(running)
    assert first["state"] == "succeeded"
    assert first["attempts"] == 2
    assert any("restarted" in (h.get("debugInfo") or "") for h in first["history"])
    assert all(c.id not in {x.id for x in _containers(running)} for c in left)  # the orphan was removed
    assert server.wait_state(queued)["state"] == "succeeded"
    assert server.get(f"/batches/{queued}/stdout").text == "queued\n"
