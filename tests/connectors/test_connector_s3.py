"""The ``s3`` connector against moto servers (open one, and one that checks credentials)."""

from __future__ import annotations

import os

import pytest

from faice.connectors.staging import ConnectorRequest, StagingSession
from faice.connectors.testing import ConnectorConformance, closed_port, wait_for_port
from faice.errors import ConnectorError

pytestmark = pytest.mark.s3


class BucketPlace:
    def __init__(self, server, bucket):
        self.server = server
        self.bucket = bucket

    def _access(self, key):
        return {"url": f"s3://{self.bucket}/{key}", "endpointUrl": self.server.url, "region": self.server.region,
                "auth": {"accessKeyId": "testing", "secretAccessKey": "faice-open-secret"}}

    def file(self, name):
        return self._access(name)

    def dir(self, name):
        return self._access(name + "/")

    def missing_file(self):
        return self._access("does-not-exist.bin")

    def bad_credentials(self, operation):
        return {"url": f"s3://{self.bucket}/x.bin", "endpointUrl": self.server.auth_url, "region": self.server.region,
                "auth": {"accessKeyId": self.server.auth_key_id, "secretAccessKey": "wrong-secret-value"}}

    def unreachable(self):
        return {"url": f"s3://{self.bucket}/x.bin", "endpointUrl": f"http://127.0.0.1:{closed_port()}",
                "region": "us-east-1", "auth": {"accessKeyId": "faice-key-id", "secretAccessKey": "faice-unreachable-secret"}}


class TestS3Connector(ConnectorConformance):
    command = "s3"

    @pytest.fixture
    def place(self, s3_server, s3_bucket):
        return BucketPlace(s3_server, s3_bucket)


def test_multipart_file_and_credentials_on_the_auth_server(s3_server, tmp_path):
    client = s3_server.client(auth=True)
    bucket = "faice-auth-" + os.urandom(4).hex()
    client.create_bucket(Bucket=bucket)
    try:
        data = os.urandom(40 * 1024 * 1024 + 5)  # above the 16 MiB multipart threshold
        src = tmp_path / "big.bin"
        src.write_bytes(data)
        access = {"url": f"s3://{bucket}/big.bin", "endpointUrl": s3_server.auth_url, "region": s3_server.region,
                  "auth": {"accessKeyId": s3_server.auth_key_id, "secretAccessKey": s3_server.auth_secret}}
        with StagingSession(tmp_path / "w") as session:
            session.send(ConnectorRequest("o", "s3", access), "File", src)
            assert session.stage_in(ConnectorRequest("i", "s3", access), "File").read_bytes() == data
        assert client.head_object(Bucket=bucket, Key="big.bin")["ContentLength"] == len(data)
        bad = dict(access, auth={"accessKeyId": s3_server.auth_key_id, "secretAccessKey": "wrong-secret-value"})
        with StagingSession(tmp_path / "w") as session, pytest.raises(ConnectorError) as err:
            session.stage_in(ConnectorRequest("batches[3].inputs.big", "s3", bad), "File")
        assert "batches[3].inputs.big" in str(err.value) and "access denied" in str(err.value)
        assert "wrong-secret-value" not in str(err.value)
    finally:
        for obj in client.list_objects_v2(Bucket=bucket).get("Contents", []):
            client.delete_object(Bucket=bucket, Key=obj["Key"])
        client.delete_bucket(Bucket=bucket)


def test_bad_url_is_a_schema_error(tmp_path):
    with StagingSession(tmp_path) as session, pytest.raises(ConnectorError) as err:
        session.validate(ConnectorRequest("batches[0].inputs.d", "s3", {"url": "https://bucket/key"}), "receive-file")
    assert "batches[0].inputs.d.connector.access.url: expected text matching" in str(err.value)


def test_missing_prefix_fails_directory_validation(s3_server, s3_bucket, tmp_path):
    access = {"url": f"s3://{s3_bucket}/nothing-here/", "endpointUrl": s3_server.url, "region": s3_server.region,
              "auth": {"accessKeyId": "testing", "secretAccessKey": "faice-open-secret"}}
    with StagingSession(tmp_path) as session, pytest.raises(ConnectorError, match="no objects under this prefix"):
        session.validate(ConnectorRequest("i", "s3", access), "receive-dir")


@pytest.fixture
def private_moto(tmp_path_factory):
    """Our own moto server on a free port, so a test can kill it mid-transfer."""
    import shutil
    import signal
    import subprocess
    import sys
    from pathlib import Path

    program = Path(sys.executable).with_name("moto_server")
    if not program.exists():
        program = shutil.which("moto_server")
    if not program:
        pytest.skip("moto_server is not installed")
    port = closed_port()
    process = subprocess.Popen([str(program), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    wait_for_port(port, 20)
    yield f"http://127.0.0.1:{port}", process
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def test_server_killed_mid_transfer_leaves_no_complete_looking_file(private_moto, tmp_path):
    import signal
    import threading
    import time

    import boto3
    from botocore.config import Config

    url, process = private_moto
    client = boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="k",
                          aws_secret_access_key="private-moto-secret", config=Config(s3={"addressing_style": "path"}))
    client.create_bucket(Bucket="killme")
    client.put_object(Bucket="killme", Key="big.bin", Body=os.urandom(96 * 1024 * 1024))
    work = tmp_path / "w"
    began = threading.Event()

    def killer():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if any(p.is_file() and p.stat().st_size > 0 for p in work.rglob("*")):
                began.set()
                os.killpg(process.pid, signal.SIGKILL)
                return
            time.sleep(0.005)

    thread = threading.Thread(target=killer)
    thread.start()
    access = {"url": "s3://killme/big.bin", "endpointUrl": url, "region": "us-east-1",
              "auth": {"accessKeyId": "k", "secretAccessKey": "private-moto-secret"}}
    try:
        with StagingSession(work, timeout=5) as session:
            with pytest.raises(ConnectorError) as err:
                session.stage_in(ConnectorRequest("batches[0].inputs.big", "s3", access), "File")
            assert "batches[0].inputs.big" in str(err.value)
            assert began.is_set()
            assert [p for p in work.rglob("*") if p.is_file()] == []
    finally:
        thread.join()
