"""The ``http`` connector against the test nginx (GET open, PUT with basic auth, TLS)."""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import uuid
import zipfile
from pathlib import Path

import pytest

from faice.connectors.staging import ConnectorRequest, StagingSession
from faice.connectors.testing import ConnectorConformance, closed_port, make_tree, read_tree, wait_for_port
from faice.errors import ConnectorError

pytestmark = pytest.mark.http


class NginxPlace:
    def __init__(self, server, prefix):
        self.server = server
        self.prefix = prefix

    def _auth(self, password=None):
        return {"username": self.server.user, "password": password or self.server.password}

    def file(self, name):
        return {"url": f"{self.server.url}/{self.prefix}/{name}", "method": "PUT", "auth": self._auth()}

    dir = file

    def missing_file(self):
        return {"url": f"{self.server.url}/{self.prefix}/does-not-exist.bin"}

    def bad_credentials(self, operation):
        if operation.startswith("receive"):
            return None  # GET is open on the test server
        access = self.file("bad.bin")
        access["auth"] = self._auth("wrong-secret-value")
        return access

    def unreachable(self):
        return {"url": f"http://127.0.0.1:{closed_port()}/x.bin"}


@pytest.fixture
def http_prefix(http_server):
    prefix = f"conf-{uuid.uuid4().hex[:10]}"
    yield prefix
    shutil.rmtree(http_server.root / prefix, ignore_errors=True)


class TestHttpConnector(ConnectorConformance):
    command = "http"
    receive_dir_needs_listing = True

    @pytest.fixture
    def place(self, http_server, http_prefix):
        return NginxPlace(http_server, http_prefix)


def test_upstream_name_and_https_with_ca(http_server, http_prefix, tmp_path, monkeypatch):
    (http_server.root / http_prefix).mkdir()
    (http_server.root / http_prefix / "a.txt").write_text("over tls")
    url = f"{http_server.https_url}/{http_prefix}/a.txt"
    with StagingSession(tmp_path) as session, pytest.raises(ConnectorError, match="TLS"):
        session.stage_in(ConnectorRequest("i", "red-connector-http", {"url": url}), "File")
    with StagingSession(tmp_path) as session:
        insecure = {"url": url, "disableSSLVerification": True}
        assert session.stage_in(ConnectorRequest("i", "red-connector-http", insecure), "File").read_text() == "over tls"
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(http_server.ca))
    with StagingSession(tmp_path) as session:
        assert session.stage_in(ConnectorRequest("i", "http", {"url": url}), "File").read_text() == "over tls"


def _tar_bytes(members) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as bundle:
        for info, data in members:
            bundle.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def test_archives_are_unpacked(http_server, http_prefix, tmp_path):
    root = http_server.root / http_prefix
    root.mkdir()
    content = make_tree(tmp_path / "tree")
    shutil.make_archive(str(root / "tree"), "gztar", tmp_path / "tree")
    shutil.make_archive(str(root / "tree"), "zip", tmp_path / "tree")
    with StagingSession(tmp_path / "w") as session:
        for name, fmt in (("tree.tar.gz", "gztar"), ("tree.zip", "zip")):
            access = {"url": f"{http_server.url}/{http_prefix}/{name}", "archiveFormat": fmt}
            req = ConnectorRequest("batches[0].inputs.d", "red-connector-http-archive", access)
            session.validate(req, "receive-dir")
            assert read_tree(session.stage_in(req, "Directory")) == content


@pytest.mark.parametrize("evil", ["../escape.txt", "link"])
def test_unsafe_archive_entries_are_refused(http_server, http_prefix, tmp_path, evil):
    root = http_server.root / http_prefix
    root.mkdir()
    info = tarfile.TarInfo(evil)
    data = b"evil"
    if evil == "link":
        info.type, info.linkname, data = tarfile.SYMTYPE, "/etc/passwd", None
    else:
        info.size = len(data)
    (root / "evil.tar.gz").write_bytes(_tar_bytes([(info, data)]))
    access = {"url": f"{http_server.url}/{http_prefix}/evil.tar.gz", "archiveFormat": "gztar"}
    with StagingSession(tmp_path / "w") as session, pytest.raises(ConnectorError, match="batches"):
        session.stage_in(ConnectorRequest("batches[0].inputs.d", "http", access), "Directory")
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "w" / "escape.txt").exists()
    assert not [p for p in (tmp_path / "w").rglob("*") if p.is_file() or p.is_symlink()]


def test_absolute_archive_entries_are_refused(http_server, http_prefix, tmp_path):
    root = http_server.root / http_prefix
    root.mkdir()
    name = f"/tmp/faice-abs-{uuid.uuid4().hex}.txt"
    info = tarfile.TarInfo(name)
    info.size = 4
    (root / "abs.tar.gz").write_bytes(_tar_bytes([(info, b"data")]))
    access = {"url": f"{http_server.url}/{http_prefix}/abs.tar.gz", "archiveFormat": "gztar"}
    with StagingSession(tmp_path / "w") as session, pytest.raises(ConnectorError, match="absolute path"):
        session.stage_in(ConnectorRequest("i", "http", access), "Directory")
    assert not os.path.exists(name)


def test_zip_with_parent_path_is_refused(http_server, http_prefix, tmp_path):
    root = http_server.root / http_prefix
    root.mkdir()
    with zipfile.ZipFile(root / "evil.zip", "w") as bundle:
        bundle.writestr("../../evil.txt", "x")
    access = {"url": f"{http_server.url}/{http_prefix}/evil.zip", "archiveFormat": "zip"}
    with StagingSession(tmp_path / "w") as session, pytest.raises(ConnectorError, match="would leave the destination"):
        session.stage_in(ConnectorRequest("i", "http", access), "Directory")


def test_mount_is_not_supported(http_server, tmp_path):
    req = ConnectorRequest("batches[0].inputs.d", "http", {"url": http_server.url}, mount=True)
    with StagingSession(tmp_path) as session, pytest.raises(ConnectorError, match="does not support mount-dir"):
        session.mount_dir(req, tmp_path / "m", writable=False)


def test_directory_without_listing_is_explained(http_server, tmp_path):
    with StagingSession(tmp_path) as session, pytest.raises(ConnectorError, match="needs a listing"):
        session.validate(ConnectorRequest("i", "http", {"url": http_server.url}), "receive-dir")


def test_bad_auth_method_is_a_schema_error(tmp_path):
    access = {"url": "http://127.0.0.1/x", "auth": {"username": "u", "password": "wrong-secret-value", "method": "ntlm"}}
    with StagingSession(tmp_path) as session, pytest.raises(ConnectorError) as err:
        session.validate(ConnectorRequest("batches[0].inputs.f", "http", access), "receive-file")
    assert "batches[0].inputs.f.connector.access.auth.method: expected one of" in str(err.value)
    assert "wrong-secret-value" not in str(err.value)


def test_large_file_streams(http_server, http_prefix, tmp_path):
    root = http_server.root / http_prefix
    root.mkdir()
    data = os.urandom(20 * 1024 * 1024)
    (root / "big.bin").write_bytes(data)
    seen = []
    with StagingSession(tmp_path, progress=lambda label, done, total: seen.append((done, total))) as session:
        path = session.stage_in(ConnectorRequest("i", "http", {"url": f"{http_server.url}/{http_prefix}/big.bin"}), "File")
        assert path.read_bytes() == data
    assert seen[-1] == (len(data), len(data))


# ------------------------------------------------------------------ interrupted transfer


@pytest.fixture
def private_nginx(tmp_path):
    """Our own nginx on a free port (throttled), so the test can kill it mid-transfer."""
    import signal
    import subprocess
    import tempfile

    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.path.exists(nginx):
        pytest.skip("nginx is not installed")
    root = tempfile.mkdtemp(prefix="faice-private-nginx-")
    os.chmod(root, 0o755)
    port = closed_port()
    (Path(root) / "data").mkdir()
    os.chmod(Path(root) / "data", 0o755)
    conf = Path(root) / "nginx.conf"
    conf.write_text(f"""
daemon off; worker_processes 1; pid {root}/nginx.pid; error_log {root}/error.log;
events {{ worker_connections 16; }}
http {{
  access_log off; client_body_temp_path {root}/body; proxy_temp_path {root}/proxy;
  fastcgi_temp_path {root}/fcgi; uwsgi_temp_path {root}/uwsgi; scgi_temp_path {root}/scgi;
  server {{ listen 127.0.0.1:{port}; root {root}/data; limit_rate 8m; }}
}}
""")
    process = subprocess.Popen([nginx, "-c", str(conf), "-p", root], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    wait_for_port(port)
    yield port, Path(root) / "data", process
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    shutil.rmtree(root, ignore_errors=True)


def test_server_killed_mid_transfer_leaves_no_complete_looking_file(private_nginx, tmp_path):
    import signal
    import threading

    port, data_dir, process = private_nginx
    (data_dir / "big.bin").write_bytes(os.urandom(32 * 1024 * 1024))  # ~4 s at 8 MiB/s
    os.chmod(data_dir / "big.bin", 0o644)
    started = threading.Event()

    def progress(label, done, total):
        if done > 2 * 1024 * 1024:
            started.set()

    def killer():
        if started.wait(20):
            os.killpg(process.pid, signal.SIGKILL)

    thread = threading.Thread(target=killer)
    thread.start()
    work = tmp_path / "w"
    try:
        with StagingSession(work, progress=progress, timeout=5) as session:
            with pytest.raises(ConnectorError) as err:
                session.stage_in(ConnectorRequest("batches[0].inputs.big", "http",
                                                  {"url": f"http://127.0.0.1:{port}/big.bin"}), "File")
            assert "batches[0].inputs.big" in str(err.value)
            assert started.is_set(), "the transfer had begun before the server died"
            assert [p for p in work.rglob("*") if p.is_file()] == []
    finally:
        thread.join()
