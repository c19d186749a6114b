"""The conformance suite every connector passes, built-in or third-party (needs pytest).

Shipped with faice so that a plugin's own test suite runs exactly the checks faice's
connectors pass: ``from faice.connectors.testing import ConnectorConformance``.
A connector's test module subclasses :class:`ConnectorConformance`, sets ``command`` and the
capability flags, and provides a ``place`` fixture: an object that hands out access dicts
for fresh locations on a real server. The suite then checks round trips of files and
nested directories, listings with sizes/checksums, and the validation failures users meet
(missing remote path, bad credentials, unreachable host) — all through the framework the
engines use, :class:`faice.connectors.staging.StagingSession`.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
from pathlib import Path

import pytest

from faice.connectors.staging import ConnectorRequest, StagingSession
from faice.errors import ConnectorError

LABEL = "batches[0].inputs.data"


def closed_port() -> int:
    """A loopback port nothing listens on (for "unreachable" cases and private servers)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, seconds: float = 10) -> None:
    """Wait until a server a test started accepts connections on 127.0.0.1:``port``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)


def make_tree(root: Path) -> dict[str, bytes]:
    """A small nested tree with binary content; returns {relative path: bytes}."""
    content = {
        "top.txt": b"top level\n",
        "sub/mid.bin": os.urandom(70_000),
        "sub/deeper/leaf.txt": b"leaf\n" * 100,
        "sub/deeper/empty.dat": b"",
    }
    for rel, data in content.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return content


def read_tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def sha1(data: bytes) -> str:
    return "sha1$" + hashlib.sha1(data).hexdigest()


class ConnectorConformance:
    """Subclass per connector; the ``place`` fixture gives access dicts on a real server.

    ``place`` must provide ``file(name) -> access``, ``dir(name) -> access``,
    ``missing_file() -> access``, and optionally ``bad_credentials(operation) -> access`` /
    ``unreachable() -> access`` (return None where it does not apply).
    """

    command: str = ""
    can_send = True
    receive_dir_needs_listing = False

    def request(self, access, listing=None) -> ConnectorRequest:
        return ConnectorRequest(LABEL, self.command, access, listing=listing)

    # ---------------------------------------------------------------- files

    def test_file_round_trip(self, place, tmp_path):
        if not self.can_send:
            pytest.skip("connector cannot send")
        data = os.urandom(3 * 1024 * 1024 + 17)
        src = tmp_path / "src.bin"
        src.write_bytes(data)
        access = place.file("conf/nested/file.bin")
        with StagingSession(tmp_path / "work") as session:
            session.validate(self.request(access), "send-file")
            session.send(self.request(access), "File", src)
            session.validate(self.request(access), "receive-file")
            received = session.stage_in(self.request(access), "File")
            assert received.read_bytes() == data
            req = self.request(access)
            req.checksum, req.size = sha1(data), len(data)
            assert session.stage_in(req, "File").read_bytes() == data

    def test_directory_round_trip_with_and_without_listing(self, place, tmp_path):
        if not self.can_send:
            pytest.skip("connector cannot send")
        content = make_tree(tmp_path / "tree")
        access = place.dir("conf/tree")
        with StagingSession(tmp_path / "work") as session:
            session.validate(self.request(access), "send-dir")
            session.send(self.request(access), "Directory", tmp_path / "tree")
            if not self.receive_dir_needs_listing:
                session.validate(self.request(access), "receive-dir")
                got = session.stage_in(self.request(access), "Directory")
                assert read_tree(got) == content
            listing = [
                {"class": "File", "basename": "top.txt", "size": len(content["top.txt"]),
                 "checksum": sha1(content["top.txt"])},
                {"class": "Directory", "basename": "sub", "listing": [
                    {"class": "Directory", "basename": "deeper", "listing": [
                        {"class": "File", "basename": "leaf.txt", "checksum": sha1(content["sub/deeper/leaf.txt"])},
                    ]},
                ]},
            ]
            session.validate(self.request(access, listing), "receive-dir")
            got = session.stage_in(self.request(access, listing), "Directory")
            assert read_tree(got) == {k: content[k] for k in ("top.txt", "sub/deeper/leaf.txt")}

    # ---------------------------------------------------------------- failures

    def test_missing_remote_file_fails_validation_clearly(self, place, tmp_path):
        with StagingSession(tmp_path) as session, pytest.raises(ConnectorError) as err:
            session.validate(self.request(place.missing_file()), "receive-file")
        text = str(err.value)
        assert LABEL in text and "does-not-exist" in text

    def test_missing_remote_file_fails_download_without_leftovers(self, place, tmp_path):
        with StagingSession(tmp_path) as session:
            with pytest.raises(ConnectorError):
                session.stage_in(self.request(place.missing_file()), "File")
            assert [p for p in tmp_path.rglob("*") if p.is_file()] == []

    @pytest.mark.parametrize("operation", ["receive-file", "send-file"])
    def test_bad_credentials_fail_validation_without_leaking(self, place, tmp_path, operation):
        access = place.bad_credentials(operation)
        if access is None:
            pytest.skip("no credentials to get wrong for this operation")
        with StagingSession(tmp_path) as session, pytest.raises(ConnectorError) as err:
            session.validate(self.request(access), operation)
        text = str(err.value)
        assert LABEL in text
        assert "wrong-secret-value" not in text

    def test_unreachable_host_fails_within_timeout(self, place, tmp_path):
        access = place.unreachable()
        if access is None:
            pytest.skip("no host to reach")
        start = time.monotonic()
        with StagingSession(tmp_path, timeout=3) as session, pytest.raises(ConnectorError) as err:
            session.validate(self.request(access), "receive-file")
        assert time.monotonic() - start < 15
        assert LABEL in str(err.value)
