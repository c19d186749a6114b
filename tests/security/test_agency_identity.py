"""No ambient identity (issue 19): a connector uses what the RED file's ``access`` gives it and
nothing of the account running faice — on an agency that account is the server's, and every
user's request would otherwise carry the server's ``~/.netrc`` logins, AWS keys or ssh
known_hosts. Against a real ``faice agency serve`` with a planted HOME, and locally through
the connectors' own staging session."""

from __future__ import annotations

import base64
import json
import os
import shutil
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from security_helpers import file_input_red

from faice.connectors.staging import ConnectorRequest, StagingSession
from faice.errors import ConnectorError

NETRC_SECRET = "AGENCY-NETRC-SECRET"
INTERNAL = "internal data only the server account may read"


class Recorder:
    """A local HTTP server that answers as an internal service trusting the server account:
    200 with the data for the right Basic login, 401 otherwise; ``/start`` redirects to
    ``redirect_to``, ``/digest`` asks for Digest credentials. Every Authorization it saw is kept."""

    def __init__(self, *, redirect_to: str | None = None) -> None:
        seen: list[tuple[str, str | None]] = []
        self.seen = seen
        login = "Basic " + base64.b64encode(f"agency-svc:{NETRC_SECRET}".encode()).decode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                seen.append((self.path, self.headers.get("Authorization")))
                if self.path == "/start" and redirect_to:
                    self.send_response(302)
                    self.send_header("Location", redirect_to)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if self.path == "/digest":
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Digest realm="evil", nonce="abc", qop="auth"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                ok = self.headers.get("Authorization") == login
                body = INTERNAL.encode() if ok else b"login required"
                self.send_response(200 if ok else 401)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def authorizations(self) -> list[str]:
        return [auth for _path, auth in self.seen if auth]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def internal():
    servers: list[Recorder] = []

    def make(**kwargs) -> Recorder:
        servers.append(Recorder(**kwargs))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


def _planted_home(tmp_path: Path) -> Path:
    """A HOME as a server account may have it: a netrc login for 127.0.0.1, AWS keys."""
    home = tmp_path / "server-home"
    home.mkdir()
    netrc = home / ".netrc"
    netrc.write_text(f"machine 127.0.0.1 login agency-svc password {NETRC_SECRET}\n")
    netrc.chmod(0o600)
    return home


def _server_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and k not in ("XDG_CONFIG_HOME",)}
    env.update(HOME=str(home), **extra)
    return env


def _reason(batch: dict) -> str:
    return "\n".join(str(entry.get("debugInfo") or "") for entry in batch["history"])


def _http_red(url: str) -> dict:
    return file_input_red({"command": "http", "access": {"url": url}})


# ---------------------------------------------------------------- http: ~/.netrc, proxies, redirects


def test_agency_http_input_never_sends_the_servers_netrc_login(make_agency, internal, tmp_path, test_image):
    service = internal()
    attacker = internal(redirect_to=service.url("/redirected"))
    server = make_agency("--parallel", "2", env=_server_env(_planted_home(tmp_path)))
    for url in (service.url("/direct"), attacker.url("/start")):
        (batch_id,) = server.batch_ids(server.submit(_http_red(url)))
        batch = server.wait_state(batch_id)
        assert batch["state"] == "failed", batch
        assert "401" in _reason(batch), batch
    assert {path for path, _ in service.seen} == {"/direct", "/redirected"}
    assert service.authorizations() == [] and attacker.authorizations() == []


def test_local_http_uses_only_the_access_credentials(internal, tmp_path, monkeypatch):
    """Also locally: no netrc login, no proxy from the environment (with its own login)."""
    service = internal()
    proxy = internal()
    monkeypatch.setenv("HOME", str(_planted_home(tmp_path)))
    monkeypatch.setenv("HTTP_PROXY", f"http://proxy-user:proxy-pw@127.0.0.1:{proxy.port}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    with StagingSession(tmp_path / "work") as session, pytest.raises(ConnectorError, match="401"):
        session.stage_in(ConnectorRequest("f", "http", {"url": service.url("/direct")}), "File")
    assert service.authorizations() == [] and proxy.seen == []


def test_access_credentials_stay_behind_on_a_redirect_to_another_host(internal, tmp_path):
    """The user's own login for their server is not handed to whatever host it redirects to,
    not even as a Digest answer to that host's challenge."""
    other = internal()
    own = internal(redirect_to=f"http://localhost:{other.port}/digest")
    access = {"url": own.url("/start"), "auth": {"username": "alice-login", "password": "alice-pw", "method": "digest"}}
    with StagingSession(tmp_path / "work") as session, pytest.raises(ConnectorError, match="401"):
        session.stage_in(ConnectorRequest("f", "http", access), "File")
    assert [path for path, _ in other.seen] == ["/digest"]
    assert other.authorizations() == []


# ---------------------------------------------------------------- s3: the AWS credential chain


@pytest.fixture
def private_object(s3_server):
    """An object on the moto server that checks IAM credentials, and a HOME whose
    ~/.aws/credentials hold keys that may read it (the server account's own)."""
    client = s3_server.client(auth=True)
    bucket = f"faice-sec-{uuid.uuid4().hex[:10]}"
    client.create_bucket(Bucket=bucket)
    client.put_object(Bucket=bucket, Key="data.csv", Body=INTERNAL.encode())
    yield f"s3://{bucket}/data.csv"
    client.delete_object(Bucket=bucket, Key="data.csv")
    client.delete_bucket(Bucket=bucket)


def _aws_home(tmp_path: Path, s3_server) -> Path:
    home = _planted_home(tmp_path)
    (home / ".aws").mkdir()
    (home / ".aws" / "credentials").write_text(
        f"[default]\naws_access_key_id = {s3_server.auth_key_id}\naws_secret_access_key = {s3_server.auth_secret}\n")
    return home


def _s3_red(url: str, s3_server, auth=None) -> dict:
    access = {"url": url, "endpointUrl": s3_server.auth_url, "region": s3_server.region}
    if auth is not None:
        access["auth"] = auth
    return file_input_red({"command": "s3", "access": access})


def test_empty_s3_keys_are_refused_before_anything_is_stored(make_agency, s3_server, private_object, tmp_path):
    server = make_agency("--paused", env=_server_env(_aws_home(tmp_path, s3_server)))
    for auth in ({"accessKeyId": "", "secretAccessKey": ""}, {"accessKeyId": "AKIAX", "secretAccessKey": ""}):
        response = server.post_red(_s3_red(private_object, s3_server, auth))
        assert response.status_code == 400, response.text
        assert "inputs.f.connector.access" in response.text
    assert server.get("/experiments/count").json() == {"count": 0}


def test_agency_s3_without_auth_is_unsigned_never_the_servers_keys(make_agency, s3_server, private_object,
                                                                  tmp_path, test_image):
    policy = tmp_path / "policy.yml"
    policy.write_text(json.dumps({"s3WithoutAuth": True}))
    server = make_agency("--parallel", "2", "--policy", str(policy), env=_server_env(_aws_home(tmp_path, s3_server)))
    (batch_id,) = server.batch_ids(server.submit(_s3_red(private_object, s3_server)))
    batch = server.wait_state(batch_id)
    assert batch["state"] == "failed", batch
    assert "access denied" in _reason(batch), batch


def test_s3_connector_signs_only_with_the_given_keys(s3_server, private_object, tmp_path, monkeypatch):
    """The plugin itself: empty keys never fall back to the account's (environment) keys."""
    from faice.connectors import ConnectorFailure
    from faice_connectors.s3 import S3Connector

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.auth_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.auth_secret)
    access = {"url": private_object, "endpointUrl": s3_server.auth_url, "region": s3_server.region,
              "auth": {"accessKeyId": "", "secretAccessKey": ""}}
    with pytest.raises(ConnectorFailure, match="must not be empty"):
        S3Connector().validate(access, "receive-file")


# ---------------------------------------------------------------- ssh: known_hosts


def _wrong_known_hosts(path: Path, ssh_server) -> None:
    """An entry for the test sshd with another host's key (the account's own, stale file)."""
    import paramiko

    path.parent.mkdir(parents=True, exist_ok=True)
    key = paramiko.Ed25519Key.from_private_key_file(str(ssh_server.key_ed25519))
    path.write_text(f"[{ssh_server.host}]:{ssh_server.port} {key.get_name()} {key.get_base64()}\n")


def _ssh_access(ssh_server, prefix: str) -> dict:
    return {"host": ssh_server.host, "port": ssh_server.port, "filePath": f"{prefix}/a.txt",
            "auth": {"username": ssh_server.user, "password": ssh_server.password}}


@pytest.fixture
def ssh_file(ssh_server):
    prefix = f"sec-{uuid.uuid4().hex[:8]}"
    (ssh_server.home / prefix).mkdir()
    (ssh_server.home / prefix / "a.txt").write_text("over ssh")
    yield prefix
    shutil.rmtree(ssh_server.home / prefix, ignore_errors=True)


def test_agency_ssh_keeps_host_keys_per_server_not_in_the_accounts_known_hosts(
        make_agency, ssh_server, ssh_file, tmp_path, test_image):
    home = _planted_home(tmp_path)
    account_file = home / ".ssh" / "known_hosts"
    _wrong_known_hosts(account_file, ssh_server)
    before = account_file.read_text()
    server = make_agency("--parallel", "2", env=_server_env(home))
    (batch_id,) = server.batch_ids(server.submit(file_input_red({"command": "ssh", "access": _ssh_access(ssh_server, ssh_file)})))
    batch = server.wait_state(batch_id)
    assert batch["state"] == "succeeded", batch
    assert account_file.read_text() == before  # neither read (the key there is wrong) nor written
    recorded = (server.dir / "work" / "known_hosts").read_text()
    assert f"[{ssh_server.host}]:{ssh_server.port} " in recorded
    assert ssh_server.host_key_pub.read_text().split()[1] in recorded


def test_local_ssh_records_host_keys_in_faices_own_file(ssh_server, ssh_file, tmp_path, monkeypatch):
    home = tmp_path / "home"
    account_file = home / ".ssh" / "known_hosts"
    _wrong_known_hosts(account_file, ssh_server)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    with StagingSession(tmp_path / "work") as session:
        path = session.stage_in(ConnectorRequest("f", "ssh", _ssh_access(ssh_server, ssh_file)), "File")
        assert path.read_text() == "over ssh"
    own = home / ".config" / "faice" / "known_hosts"
    assert ssh_server.host_key_pub.read_text().split()[1] in own.read_text()
    assert ssh_server.host_key_pub.read_text().split()[1] not in account_file.read_text()
