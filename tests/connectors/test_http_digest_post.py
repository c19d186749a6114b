"""The ``http`` connector with Digest auth and POST uploads, against a real HTTP server
(:mod:`http_app`, werkzeug on 127.0.0.1) because the test nginx has neither."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys

import pytest
from http_app import DigestServer, Running

from faice.connectors.staging import ConnectorRequest, StagingSession
from faice.errors import ConnectorError

LABEL = "batches[0].inputs.data"


@pytest.fixture
def digest(tmp_path):
    """A running Digest-auth server with a fresh password; yields (server, base URL)."""
    server = DigestServer(tmp_path / "served", "faice-digest", f"pw-{secrets.token_hex(12)}")
    server.root.mkdir()
    with Running(server) as url:
        yield server, url


def _access(server, url: str, name: str, *, password: str | None = None, **extra) -> dict:
    auth = {"username": server.username, "password": password or server.password, "method": "digest"}
    return {"url": f"{url}/files/{name}", "auth": auth, **extra}


def test_download_with_digest_auth(digest, tmp_path):
    server, url = digest
    data = os.urandom(2 * 1024 * 1024 + 5)
    (server.root / "in.bin").write_bytes(data)
    request = ConnectorRequest(LABEL, "http", _access(server, url, "in.bin"))
    with StagingSession(tmp_path / "w") as session:
        session.validate(request, "receive-file")
        assert session.stage_in(request, "File").read_bytes() == data
    authorized = [seen for seen in server.calls("GET", "/files/in.bin") if seen.authorization]
    assert authorized and all(seen.authorization.startswith("Digest ") for seen in authorized)
    assert not any(server.password in seen.authorization for seen in server.requests)


@pytest.mark.parametrize("operation", ["receive-file", "send-file"])
def test_wrong_digest_password_fails_clearly_and_is_not_retried(digest, tmp_path, operation):
    server, url = digest
    (server.root / "in.bin").write_bytes(b"data")
    wrong = f"wrong-{secrets.token_hex(8)}"
    access = _access(server, url, "in.bin", password=wrong, method="PUT")
    src = tmp_path / "out.bin"
    src.write_bytes(b"payload")
    with StagingSession(tmp_path / "w") as session, pytest.raises(ConnectorError) as err:
        if operation == "receive-file":
            session.stage_in(ConnectorRequest(LABEL, "http", access), "File")
        else:
            session.send(ConnectorRequest(LABEL, "http", access), "File", src)
    message = str(err.value)
    assert LABEL in message and "401" in message and "check auth" in message
    assert "attempts" not in message, "a refused login is permanent: no retries"
    assert wrong not in message
    if operation == "receive-file":
        assert len(server.calls("GET", "/files/in.bin")) == 2, "one challenge and one authenticated try"
    else:  # the credentials are checked with a bodyless request before any byte is sent
        assert len(server.calls("OPTIONS", "/files/in.bin")) == 2
        assert server.calls("PUT", "/files/in.bin") == []
    assert (server.root / "in.bin").read_bytes() == b"data"


@pytest.mark.parametrize("method", [None, "POST", "post", "PUT"])
def test_upload_stores_the_exact_bytes(digest, tmp_path, method):
    """POST is the upstream default for sends; the body is the file, byte for byte."""
    server, url = digest
    data = os.urandom(3 * 1024 * 1024 + 11)
    src = tmp_path / "out.bin"
    src.write_bytes(data)
    extra = {"method": method} if method else {}
    request = ConnectorRequest("batches[0].outputs.result", "http", _access(server, url, "up/out.bin", **extra))
    seen = []
    with StagingSession(tmp_path / "w", progress=lambda label, done, total: seen.append((done, total))) as session:
        session.validate(request, "send-file")
        session.send(request, "File", src)
    assert (server.root / "up" / "out.bin").read_bytes() == data
    expected = (method or "POST").upper()
    bodies = [call.body_size for call in server.calls(expected, "/files/up/out.bin")]
    assert bodies[-1] == len(data)
    assert sum(bodies) == len(data), "the file is sent once, not once per auth round trip"
    assert seen[-1] == (len(data), len(data))
    assert [done for done, _total in seen] == sorted(done for done, _total in seen)


def test_upload_is_sent_again_after_a_stale_nonce(digest, tmp_path):
    """A server that forgot its nonce answers the pre-authenticated upload with a new
    challenge: the body is rewound and sent again in full, progress still counts it once."""
    server, url = digest
    first, second = os.urandom(1024 * 1024), os.urandom(5 * 1024 * 1024 + 3)
    (tmp_path / "first.bin").write_bytes(first)
    (tmp_path / "second.bin").write_bytes(second)
    seen = []
    with StagingSession(tmp_path / "w", timeout=10,
                        progress=lambda label, done, total: seen.append((label, done, total))) as session:
        session.send(ConnectorRequest("first", "http", _access(server, url, "first.bin")), "File", tmp_path / "first.bin")
        server._nonces.clear()
        session.send(ConnectorRequest("second", "http", _access(server, url, "second.bin")), "File",
                     tmp_path / "second.bin")
    assert (server.root / "second.bin").read_bytes() == second
    assert [call.body_size for call in server.calls("POST", "/files/second.bin")] == [len(second), len(second)]
    progress = [done for label, done, _total in seen if label == "second"]
    assert progress == sorted(progress) and progress[-1] == len(second)
    assert seen[-1] == ("second", len(second), len(second))


def test_directory_upload_with_digest(digest, tmp_path):
    server, url = digest
    tree = {"a.txt": b"alpha\n", "sub/b.bin": os.urandom(70_000)}
    for rel, data in tree.items():
        (tmp_path / "tree" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "tree" / rel).write_bytes(data)
    request = ConnectorRequest("batches[0].outputs.d", "http", _access(server, url, "dir", method="PUT"))
    with StagingSession(tmp_path / "w") as session:
        session.send(request, "Directory", tmp_path / "tree")
    assert {rel: (server.root / "dir" / rel).read_bytes() for rel in tree} == tree


@pytest.mark.docker
def test_digest_password_never_reaches_output_or_records(digest, tmp_path, test_image):
    """A whole ``faice exec`` with a digest-protected input and output: the password is in
    no output, record or file of the run."""
    server, url = digest
    (server.root / "in.txt").write_text("hello digest\n")
    red = tmp_path / "red.yml"
    red.write_text(f"""
redVersion: "9"
cli:
  cwlVersion: v1.0
  class: CommandLineTool
  baseCommand: cat
  stdout: copy.txt
  inputs:
    infile: {{type: File, inputBinding: {{position: 0}}}}
  outputs:
    copy: {{type: File, outputBinding: {{glob: copy.txt}}}}
inputs:
  infile:
    class: File
    connector:
      command: http
      access: {{url: "{url}/files/in.txt", auth: {{username: {server.username}, password: "{{{{pw}}}}", method: digest}}}}
outputs:
  copy:
    class: File
    connector:
      command: red-connector-http
      access: {{url: "{url}/files/out/copy.txt", auth: {{username: {server.username}, password: "{{{{pw}}}}", method: Digest}}}}
container:
  engine: docker
  settings: {{image: {{url: "faice-test/base:bookworm"}}, ram: 256}}
execution: {{engine: ccfaice, settings: {{}}}}
""")
    variables = tmp_path / "vars.yml"
    variables.write_text(f"pw: {server.password}\n")
    outdir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "faice", "exec", str(red), "--variables", str(variables), "--outdir", str(outdir),
         "--non-interactive", "--disable-pull", "--json", "--debug"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (server.root / "out" / "copy.txt").read_text() == "hello digest\n"
    assert server.password not in result.stdout + result.stderr
    leaked = [p for p in outdir.rglob("*") if p.is_file() and server.password.encode() in p.read_bytes()]
    assert leaked == []
