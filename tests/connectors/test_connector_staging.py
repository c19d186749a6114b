"""The connector framework: lookup, schema messages, caching, temp names, retries, cleanup."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest

from faice.connectors import Connector, ConnectorFailure, TransientFailure, registry
from faice.connectors.staging import ConnectorRequest, StagingSession
from faice.errors import ConnectorError
from faice.secrets import REDACTOR


class CountingConnector(Connector):
    """A test plugin registered by hand: counts downloads, fails on demand."""

    names = ("counting-test",)
    access_schema = {
        "type": "object",
        "properties": {"text": {"type": "string"}, "port": {"type": "integer"},
                       "fail": {"type": "string"}, "password": {"type": "string"}},
        "required": ["text"],
        "additionalProperties": False,
    }
    calls = 0
    lock = threading.Lock()

    def receive_file(self, access, dest, progress):
        with CountingConnector.lock:
            CountingConnector.calls += 1
            calls = CountingConnector.calls
        fail = access.get("fail")
        with open(dest, "w") as handle:
            handle.write(access["text"][:3])  # a partial write before any failure
            if fail == "always":
                raise ConnectorFailure(f"server refused for {access.get('password')}")
            if fail == "once" and calls == 1:
                raise TransientFailure("connection dropped")
            if fail == "transient":
                raise TransientFailure("connection dropped")
            handle.write(access["text"][3:])
        progress.advance(len(access["text"]))


@pytest.fixture(autouse=True)
def counting_plugin(monkeypatch):
    CountingConnector.calls = 0
    monkeypatch.setitem(registry._loaded, "counting-test", CountingConnector)
    monkeypatch.setattr("faice.connectors.staging.RETRY_DELAYS", (0.01, 0.02))


def request(text="hello world", **access) -> ConnectorRequest:
    return ConnectorRequest("batches[0].inputs.data", "counting-test", {"text": text, **access})


def test_builtins_are_found_through_entry_points():
    from faice_connectors.file import FileConnector

    assert registry.plugin_class("file") is FileConnector
    assert {"file", "http", "s3", "ssh"} <= set(registry.plugin_names())


def test_unknown_command_is_a_clear_error(tmp_path):
    with StagingSession(tmp_path) as session, pytest.raises(ConnectorError) as err:
        session.validate(ConnectorRequest("batches[1].inputs.x", "no-such-connector-xyz", {}), "receive-file")
    assert "batches[1].inputs.x.connector.command" in str(err.value)
    assert "no-such-connector-xyz" in str(err.value)


def test_schema_errors_name_the_key_path_and_expected_type(tmp_path):
    with StagingSession(tmp_path) as session, pytest.raises(ConnectorError) as err:
        session.validate(request(port="22"), "receive-file")
    assert "batches[0].inputs.data.connector.access.port: expected integer" in str(err.value)
    with StagingSession(tmp_path) as session, pytest.raises(ConnectorError) as err:
        session.validate(ConnectorRequest("batches[0].inputs.data", "counting-test", {"txt": "a"}), "receive-file")
    assert "missing required key 'text'" in str(err.value)
    assert "unknown key 'txt'" in str(err.value)


def test_protected_underscore_keys_are_normalised_and_redacted(tmp_path):
    with StagingSession(tmp_path) as session, pytest.raises(ConnectorError) as err:
        session.stage_in(request(_password="s3cr3t-underscore", fail="always"), "File")
    assert "s3cr3t-underscore" not in str(err.value)
    assert "********" in str(err.value)
    assert "s3cr3t-underscore" not in REDACTOR.redact("x s3cr3t-underscore")


def test_unsupported_operation_is_reported(tmp_path):
    with StagingSession(tmp_path) as session, pytest.raises(ConnectorError) as err:
        session.send(request(), "File", Path(__file__))
    assert "does not support send-file" in str(err.value)


def test_shared_input_is_downloaded_once_and_read_only(tmp_path):
    paths = []
    with StagingSession(tmp_path) as session:
        threads = [threading.Thread(target=lambda: paths.append(session.stage_in(request(), "File")))
                   for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert CountingConnector.calls == 1
        assert len(set(paths)) == 1 and len(paths) == 8
        assert paths[0].read_text() == "hello world"
        assert not os.access(paths[0], os.W_OK) or os.geteuid() == 0
        assert paths[0].stat().st_mode & 0o222 == 0
        other = session.stage_in(request("different"), "File")
        assert other != paths[0] and CountingConnector.calls == 2
    assert not paths[0].exists(), "close() removes the cache"


def test_failed_download_leaves_no_file_that_looks_complete(tmp_path):
    with StagingSession(tmp_path) as session:
        with pytest.raises(ConnectorError) as err:
            session.stage_in(request(fail="transient"), "File")
        assert "after 3 attempts" in str(err.value)
        assert CountingConnector.calls == 3
        leftovers = [p for p in tmp_path.rglob("*") if p.is_file()]
        assert leftovers == []


def test_transient_failure_is_retried(tmp_path):
    with StagingSession(tmp_path) as session:
        path = session.stage_in(request(fail="once"), "File")
        assert path.read_text() == "hello world"
        assert CountingConnector.calls == 2


def test_checksum_and_size_are_verified(tmp_path):
    good = "sha1$" + hashlib.sha1(b"hello world").hexdigest()
    with StagingSession(tmp_path) as session:
        req = request()
        req.checksum, req.size = good, 11
        assert session.stage_in(req, "File").read_text() == "hello world"
        bad = request("hello there")
        bad.checksum = good
        with pytest.raises(ConnectorError, match="checksum mismatch"):
            session.stage_in(bad, "File")
        short = request("hello you")
        short.size = 11
        with pytest.raises(ConnectorError, match="size 11"):
            session.stage_in(short, "File")


def test_progress_reports_bytes(tmp_path):
    seen = []
    with StagingSession(tmp_path, progress=lambda label, done, total: seen.append((label, done))) as session:
        session.stage_in(request(), "File")
    assert seen[-1] == ("batches[0].inputs.data", 11)


def test_mount_flag_on_file_input_is_refused(tmp_path):
    req = request()
    req.mount = True
    with StagingSession(tmp_path) as session, pytest.raises(ConnectorError, match="only Directory inputs"):
        session.stage_in(req, "File")


def test_listing_basename_cannot_escape(tmp_path):
    req = ConnectorRequest("batches[0].inputs.d", "file", {"path": str(tmp_path)},
                           listing=[{"class": "File", "basename": "../etc/passwd"}])
    with StagingSession(tmp_path / "w") as session, pytest.raises(ConnectorError, match=r"listing\[0\].basename"):
        session.stage_in(req, "Directory")


def test_close_is_idempotent_and_session_refuses_afterwards(tmp_path):
    session = StagingSession(tmp_path)
    session.stage_in(request(), "File")
    session.close()
    session.close()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ConnectorError, match="closed"):
        session.stage_in(request(), "File")


def test_the_next_start_removes_the_staging_area_of_a_killed_run(tmp_path):
    import socket

    from faice.runtime.tempdirs import remove_stale_tempdirs

    run_dir = tmp_path / "faice-run-killed-2"  # a run's temp dir, whose owner process is gone
    run_dir.mkdir(mode=0o700)  # as faice makes it: private
    (run_dir / "owner").write_text(f"{socket.gethostname()}:999999999:1")
    session = StagingSession(run_dir / "staging")
    path = session.stage_in(request(), "File")  # never closed: the process "was killed"
    assert path.exists()
    assert remove_stale_tempdirs(tmp_path) == [run_dir]
    assert not path.exists() and list(tmp_path.iterdir()) == []


def test_access_schemas_are_listed_per_operation():
    schemas = registry.access_schemas()
    assert schemas["ssh"]["receive-file"]["required"] == ["host", "auth", "filePath"]
    assert "mount-dir" in schemas["ssh"] and "mount-dir" not in schemas["http"]
    assert set(schemas["file"]) == {"receive-file", "receive-dir", "send-file", "send-dir"}


def test_unexpected_plugin_exception_becomes_a_connector_error(tmp_path, monkeypatch):
    class Broken(CountingConnector):
        def receive_file(self, access, dest, progress):
            raise KeyError("surprise")

    monkeypatch.setitem(registry._loaded, "broken-test", Broken)
    with StagingSession(tmp_path) as session, pytest.raises(ConnectorError) as err:
        session.stage_in(ConnectorRequest("batches[0].inputs.x", "broken-test", {"text": "a"}), "File")
    assert "batches[0].inputs.x" in str(err.value) and "KeyError" in str(err.value)
    assert isinstance(err.value.__cause__, KeyError), "the cause stays available for --debug"
