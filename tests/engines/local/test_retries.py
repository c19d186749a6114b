"""``faice exec --retries N`` with a real third-party connector plugin that fails on purpose.

The plugin is installed the way a third party installs one: a module plus a ``*.dist-info``
(METADATA + entry_points.txt under ``faice.connectors.v1``) on the ``PYTHONPATH`` of the
``faice exec`` process. It counts its calls in a file named in its ``access`` and fails the
first ``failTimes`` receives with ``TransientFailure`` (or every one with a permanent
``ConnectorFailure`` when ``deny`` is set).

Two retry layers are involved (docs/cli.md, ``--retries``): the connector framework tries a
transfer up to 3 times with a short backoff, then ``--retries N`` runs the whole batch again
up to N times. Permanent failures are retried by neither.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from engine_helpers import faice_containers, read, sh_red

from faice.connectors.staging import RETRY_DELAYS

pytestmark = pytest.mark.docker

FRAMEWORK_ATTEMPTS = len(RETRY_DELAYS) + 1  # tries of one transfer inside one batch attempt

PLUGIN = '''
"""A connector that fails on purpose (test plugin)."""
from pathlib import Path

from faice.connectors import Connector, ConnectorFailure, TransientFailure


class FlakyConnector(Connector):
    names = ("flaky",)
    access_schema = {
        "type": "object",
        "required": ["counter", "failTimes"],
        "properties": {"counter": {"type": "string"}, "failTimes": {"type": "integer"},
                       "deny": {"type": "boolean"}, "password": {"type": "string"},
                       "log": {"type": "string"}},
        "additionalProperties": False,
    }

    def _count(self, access):
        counter = Path(access["counter"])
        calls = int(counter.read_text()) + 1 if counter.exists() else 1
        counter.write_text(str(calls))
        if access.get("deny"):
            raise ConnectorFailure(f"login refused for password {access.get('password')}")
        if calls <= access["failTimes"]:
            raise TransientFailure(f"the store answered 503 (call {calls})")
        return calls

    def receive_file(self, access, dest, progress):
        calls = self._count(access)
        dest.write_text(f"payload after {calls} calls\\n")
        progress.advance(dest.stat().st_size)

    def send_file(self, access, src, progress):
        with open(access["log"], "a") as log:  # what each attempt was asked to send
            log.write(Path(src).read_text())
        self._count(access)
'''


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory) -> Path:
    """A directory holding the plugin module and its dist-info, as pip would leave them."""
    root = tmp_path_factory.mktemp("flaky-plugin")
    (root / "flaky_connector.py").write_text(textwrap.dedent(PLUGIN))
    info = root / "faice_flaky_connector-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: faice-flaky-connector\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[faice.connectors.v1]\nflaky = flaky_connector:FlakyConnector\n")
    return root


def flaky_red(tmp_path: Path, image: str, *, fail_times: int = 0, deny: bool = False) -> tuple[Path, Path]:
    """A one-batch RED file whose File input comes through the flaky plugin; and its counter."""
    counter = tmp_path / "calls.txt"
    red = sh_red(tmp_path / "r.json", 'cat "$1"', image,
                 extra_inputs={"data": {"type": "File", "inputBinding": {"position": 2}}})
    doc = read(red)
    access = {"counter": str(counter), "failTimes": fail_times}
    if deny:
        access.update(deny=True, password="hunter2-secret")
    doc["inputs"]["data"] = {"class": "File", "connector": {"command": "flaky", "access": access}}
    red.write_text(json.dumps(doc))
    return red, counter


def faice_exec(red: Path, outdir: Path, plugin_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(plugin_path), env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "faice", "exec", str(red), "--outdir", str(outdir),
                           "--no-progress", "--json", *args],
                          capture_output=True, text=True, timeout=120, env=env)


def only_record(outdir: Path) -> dict:
    (batch,) = (outdir / "batches").iterdir()
    return read(batch / "result.json")


def calls(counter: Path) -> int:
    return int(counter.read_text()) if counter.exists() else 0


def test_framework_absorbs_a_short_blip_without_retrying_the_batch(tmp_path, plugin_path, test_image):
    red, counter = flaky_red(tmp_path, test_image, fail_times=1)
    proc = faice_exec(red, tmp_path / "run", plugin_path)
    assert proc.returncode == 0, proc.stderr
    record = only_record(tmp_path / "run")
    assert record["state"] == "succeeded" and record["attempts"] == 1
    assert "retriedAfter" not in record
    assert calls(counter) == 2
    stdout = (tmp_path / "run" / "batches" / record["batchId"] / "stdout.txt").read_text()
    assert stdout == "payload after 2 calls\n"


def test_retries_run_the_batch_again_after_a_lasting_transient_failure(tmp_path, plugin_path, docker_client,
                                                                       test_image):
    red, counter = flaky_red(tmp_path, test_image, fail_times=FRAMEWORK_ATTEMPTS)
    proc = faice_exec(red, tmp_path / "run", plugin_path, "--retries", "1")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["state"] == "succeeded" and summary["counts"] == {"succeeded": 1}
    record = only_record(tmp_path / "run")
    assert record["state"] == "succeeded"
    assert record["attempts"] == 2
    (retried,) = record["retriedAfter"]
    assert retried.startswith("[connector] batches[0].inputs.data")
    assert "503" in retried and f"after {FRAMEWORK_ATTEMPTS} attempts" in retried
    assert calls(counter) == FRAMEWORK_ATTEMPTS + 1
    assert (tmp_path / "run" / "batches" / record["batchId"] / "stdout.txt").read_text() == (
        f"payload after {FRAMEWORK_ATTEMPTS + 1} calls\n")
    assert faice_containers(docker_client, summary["runId"]) == []


def test_without_retries_a_lasting_transient_failure_fails_the_batch(tmp_path, plugin_path, test_image):
    red, counter = flaky_red(tmp_path, test_image, fail_times=FRAMEWORK_ATTEMPTS)
    proc = faice_exec(red, tmp_path / "run", plugin_path)
    assert proc.returncode == 1, proc.stderr
    summary = json.loads(proc.stdout)
    (entry,) = summary["batches"]
    assert entry["state"] == "failed" and entry["failureClass"] == "connector"
    record = only_record(tmp_path / "run")
    assert record["attempts"] == 1 and "retriedAfter" not in record
    assert record["message"] == (f"batches[0].inputs.data: receive-file with connector 'flaky' failed "
                                 f"(after {FRAMEWORK_ATTEMPTS} attempts): the store answered 503 "
                                 f"(call {FRAMEWORK_ATTEMPTS})")
    assert record["process"]["executed"] is False
    assert calls(counter) == FRAMEWORK_ATTEMPTS
    assert "batches[0].inputs.data" in proc.stderr and "[connector]" in proc.stderr


def test_a_permanent_failure_is_never_retried(tmp_path, plugin_path, test_image):
    red, counter = flaky_red(tmp_path, test_image, deny=True)
    proc = faice_exec(red, tmp_path / "run", plugin_path, "--retries", "3")
    assert proc.returncode == 1, proc.stderr
    record = only_record(tmp_path / "run")
    assert record["state"] == "failed" and record["failureClass"] == "connector"
    assert record["attempts"] == 1 and "retriedAfter" not in record
    assert calls(counter) == 1
    assert "login refused" in record["message"] and "after" not in record["message"]
    everything = proc.stdout + proc.stderr + json.dumps(record)
    assert "hunter2-secret" not in everything and "login refused for password ********" in record["message"]


def test_a_failed_upload_is_sent_again_without_re_running_the_command(tmp_path, plugin_path, test_image):
    counter, log = tmp_path / "calls.txt", tmp_path / "sent.log"
    red = sh_red(tmp_path / "r.json", "cat /proc/sys/kernel/random/uuid > model.txt", test_image,
                 outputs={"model": {"type": "File", "outputBinding": {"glob": "model.txt"}}},
                 job_outputs={"model": {"class": "File", "connector": {"command": "flaky", "access": {
                     "counter": str(counter), "failTimes": FRAMEWORK_ATTEMPTS, "log": str(log)}}}})
    proc = faice_exec(red, tmp_path / "run", plugin_path, "--retries", "1")
    assert proc.returncode == 0, proc.stderr
    record = only_record(tmp_path / "run")
    assert record["state"] == "succeeded" and record["attempts"] == 2
    (retried,) = record["retriedAfter"]
    assert retried.startswith("[connector] batches[0].outputs.model: send-file")
    assert record["outputs"]["model"]["sent"] is True
    sent = log.read_text().splitlines()
    assert len(sent) == FRAMEWORK_ATTEMPTS + 1
    assert len(set(sent)) == 1, "the command ran again although only the upload had failed"
    model = tmp_path / "run" / "batches" / record["batchId"] / "outputs" / "model.txt"
    assert model.read_text().strip() == sent[0]


def test_a_timeout_is_not_retried(tmp_path, plugin_path, docker_client, test_image):
    red = sh_red(tmp_path / "r.json", "sleep 30", test_image)
    proc = faice_exec(red, tmp_path / "run", plugin_path, "--timeout", "1", "--retries", "2")
    assert proc.returncode == 1, proc.stderr
    record = only_record(tmp_path / "run")
    assert record["failureClass"] == "timeout" and record["attempts"] == 1
    assert "retriedAfter" not in record
    assert faice_containers(docker_client, record["runId"]) == []
