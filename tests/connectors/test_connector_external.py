"""External connectors (RED connector CLI 1) run on the host: a tiny one written here, and
the upstream ``red-connector-http``/``red-connector-ssh`` from PyPI in a separate venv."""

from __future__ import annotations

import fcntl
import os
import shutil
import stat
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from faice.connectors.staging import ConnectorRequest, StagingSession
from faice.errors import ConnectorError

SCRIPT = textwrap.dedent('''\
    #!{python}
    """A minimal RED connector CLI 1 program: copies a host file, logs its argv and files."""
    import json, os, shutil, stat, sys
    log = os.environ["FAKE_CONNECTOR_LOG"]
    with open(log, "a") as handle:
        record = {{"argv": sys.argv[1:]}}
        if len(sys.argv) > 2 and sys.argv[2].startswith(("/dev/fd/", "/")) and sys.argv[1] != "umount-dir":
            record["mode"] = oct(stat.S_IMODE(os.stat(sys.argv[2]).st_mode))
            record["access"] = json.load(open(sys.argv[2]))
        handle.write(json.dumps(record) + "\\n")
    sub = sys.argv[1]
    if sub == "cli-version":
        print(os.environ.get("FAKE_CLI_VERSION", "1"))
        sys.exit(0)
    access = json.load(open(sys.argv[2]))
    if access.get("fail"):
        print("remote said no: " + access.get("password", ""), file=sys.stderr)
        sys.exit(3)
    if sub == "receive-file":
        shutil.copyfile(access["path"], sys.argv[3])
    elif sub == "send-file":
        shutil.copyfile(sys.argv[3], access["path"])
    elif sub == "receive-dir":
        listing = [a for a in sys.argv if a.startswith("--listing=")]
        items = json.load(open(listing[0].split("=", 1)[1])) if listing else []
        for item in items:
            open(os.path.join(sys.argv[3], item["basename"]), "w").write("listed")
        open(os.path.join(sys.argv[3], "listing.json"), "w").write(json.dumps(items))
    sys.exit(0)
''')


@pytest.fixture
def fake_connector(tmp_path, monkeypatch):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    program = bindir / "fake-red-connector"
    program.write_text(SCRIPT.format(python=sys.executable))
    program.chmod(0o755)
    log = tmp_path / "calls.log"
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_CONNECTOR_LOG", str(log))
    return log


def calls(log: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in log.read_text().splitlines()]


def test_protocol_calls_and_temp_files(fake_connector, tmp_path):
    src = tmp_path / "input.txt"
    src.write_text("external data")
    access = {"path": str(src), "_password": "ext-secret-123"}
    listing = [{"class": "File", "basename": "a.txt"}]
    with StagingSession(tmp_path / "w") as session:
        req = ConnectorRequest("batches[0].inputs.f", "fake-red-connector", access)
        session.validate(req, "receive-file")
        assert session.stage_in(req, "File").read_text() == "external data"
        got = session.stage_in(ConnectorRequest("d", "fake-red-connector", {"path": "x"}, listing=listing), "Directory")
        assert '"basename": "a.txt"' in (got / "listing.json").read_text()
    seen = calls(fake_connector)
    assert [c["argv"][0] for c in seen] == ["cli-version", "receive-file-validate", "receive-file", "receive-dir"]
    assert seen[1]["mode"] == "0o600" and seen[2]["mode"] == "0o600"
    assert seen[1]["access"] == {"path": str(src), "password": "ext-secret-123"}, "_key normalised"
    assert seen[3]["argv"][-1].startswith("--listing=")
    for call in seen[1:]:
        assert call["argv"][1].startswith("/dev/fd/"), "access JSON in memory, never on disk"
        assert "ext-secret-123" not in " ".join(call["argv"])


def test_failure_uses_stderr_redacted(fake_connector, tmp_path):
    access = {"path": "x", "fail": True, "password": "ext-secret-456"}
    with StagingSession(tmp_path) as session, pytest.raises(ConnectorError) as err:
        session.stage_in(ConnectorRequest("batches[1].inputs.f", "fake-red-connector", access), "File")
    text = str(err.value)
    assert "batches[1].inputs.f" in text and "remote said no" in text and "exit code 3" in text
    assert "ext-secret-456" not in text


def test_unsupported_cli_version_is_refused(fake_connector, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_CLI_VERSION", "2")
    with StagingSession(tmp_path) as session, pytest.raises(ConnectorError, match="cli-version '2'"):
        session.validate(ConnectorRequest("i", "fake-red-connector", {"path": "x"}), "receive-file")


# ------------------------------------------------------------------ upstream connectors


def _upstream_venv() -> Path:
    base = Path(os.environ.get("FAICE_INFRA_DIR") or "/tmp/faice-infra")
    venv = base / "upstream-connectors-venv"
    base.mkdir(parents=True, exist_ok=True)
    with open(base / "upstream-connectors-venv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = venv / ".faice-installed"
        if not done.exists():
            shutil.rmtree(venv, ignore_errors=True)
            try:
                subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
                subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "red-connector-ssh==1.3",
                                "red-connector-http==1.0"], check=True, capture_output=True, timeout=600)
            except (subprocess.SubprocessError, OSError) as exc:
                shutil.rmtree(venv, ignore_errors=True)
                pytest.fail(f"cannot install the upstream connectors from PyPI: {exc}")
            done.write_text("red-connector-ssh==1.3 red-connector-http==1.0\n")
    return venv


@pytest.fixture(scope="session")
def upstream_bin() -> Path:
    return _upstream_venv() / "bin"


@pytest.mark.http
def test_upstream_red_connector_http_json(upstream_bin, http_server, tmp_path, monkeypatch):
    """``red-connector-http-json`` is no built-in name, so it runs as an external program."""
    monkeypatch.setenv("PATH", f"{upstream_bin}{os.pathsep}{os.environ['PATH']}")
    prefix = f"ext-{uuid.uuid4().hex[:8]}"
    (http_server.root / prefix).mkdir()
    (http_server.root / prefix / "d.json").write_text('{"epochs": 3}')
    try:
        access = {"url": f"{http_server.url}/{prefix}/d.json"}
        with StagingSession(tmp_path / "w") as session:
            req = ConnectorRequest("i", "red-connector-http-json", access)
            session.validate(req, "receive-file")
            assert '"epochs": 3' in session.stage_in(req, "File").read_text().replace("'", '"')
            missing = ConnectorRequest("batches[0].inputs.m", "red-connector-http-json",
                                       {"url": f"{http_server.url}/{prefix}/missing.json"})
            with pytest.raises(ConnectorError, match=r"batches\[0\].inputs.m.*404"):
                session.stage_in(missing, "File")
    finally:
        shutil.rmtree(http_server.root / prefix, ignore_errors=True)


def _remote_dir(ssh_server, name: str, text: str) -> tuple[str, Path]:
    """A fresh directory ``data/ext-…`` of the ssh user's, in their home, holding file ``name``:
    its name and its path on this host."""
    prefix = f"ext-{uuid.uuid4().hex[:8]}"
    remote = ssh_server.home / "data" / prefix
    remote.mkdir(parents=True)
    (remote / name).write_text(text)
    for path in (remote, remote / name):
        shutil.chown(path, ssh_server.user, ssh_server.user)
    return prefix, remote


@pytest.mark.ssh
def test_upstream_red_connector_ssh_by_path(upstream_bin, ssh_server, tmp_path):
    prefix, remote = _remote_dir(ssh_server, "in.txt", "via upstream")
    program = str(upstream_bin / "red-connector-ssh")
    auth = {"username": ssh_server.user, "password": ssh_server.password}
    try:
        with StagingSession(tmp_path / "w") as session:
            access = {"host": ssh_server.host, "port": ssh_server.port, "auth": auth,
                      "filePath": f"data/{prefix}/in.txt"}
            req = ConnectorRequest("i", program, access)
            session.validate(req, "receive-file")
            assert session.stage_in(req, "File").read_text() == "via upstream"
            out = tmp_path / "out.txt"
            out.write_text("result")
            session.send(ConnectorRequest("o", program, {**access, "filePath": f"data/{prefix}/out/r.txt"}), "File", out)
            assert (remote / "out" / "r.txt").read_text() == "result"
            bad = {**access, "auth": {"username": ssh_server.user, "password": "wrong-secret-value"}}
            with pytest.raises(ConnectorError) as err:
                session.validate(ConnectorRequest("batches[0].inputs.x", program, bad), "receive-file")
            assert "wrong-secret-value" not in str(err.value) and "batches[0].inputs.x" in str(err.value)
    finally:
        shutil.rmtree(remote, ignore_errors=True)
        assert not any(stat.S_ISREG(p.stat().st_mode) for p in Path(tmp_path).glob("faice-connector-*.json"))


@pytest.mark.ssh
def test_upstream_red_connector_ssh_mount_and_umount(upstream_bin, ssh_server, tmp_path):
    import os.path

    prefix, remote = _remote_dir(ssh_server, "seen.txt", "mounted by upstream")
    program = str(upstream_bin / "red-connector-ssh")
    access = {"host": ssh_server.host, "port": ssh_server.port,
              "auth": {"username": ssh_server.user, "password": ssh_server.password}, "dirPath": f"data/{prefix}"}
    mnt = tmp_path / "mnt"
    try:
        with StagingSession(tmp_path / "w") as session:
            req = ConnectorRequest("i", program, access, mount=True)
            session.validate(req, "mount-dir")
            session.mount_dir(req, mnt, writable=False)
            assert (mnt / "seen.txt").read_text() == "mounted by upstream"
            session.umount(mnt)
            assert not os.path.ismount(mnt)
    finally:
        if os.path.ismount(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)
        shutil.rmtree(remote, ignore_errors=True)
