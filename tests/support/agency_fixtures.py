"""Fixtures for the agency (a pytest plugin that tests/conftest.py registers, for tests/agency/
and tests/engines/agency/): a real ``faice agency serve`` subprocess on 127.0.0.1 with a free
port and a temp SQLite database (or a real PostgreSQL cluster), its users, and helpers.

The PostgreSQL fixture starts its own cluster from Debian's ``postgresql`` package in a temp
dir (initdb + pg_ctl as user ``postgres``, socket and data in the temp dir, 127.0.0.1 only)
and stops it afterwards.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from agency_helpers import faice, free_port  # noqa: F401  (re-exported for fixtures)
from docker_helpers import remove_labelled

FINAL = ("succeeded", "failed", "cancelled")
PG_BIN = Path("/usr/lib/postgresql/15/bin")


@dataclass
class AgencyServer:
    dir: Path
    db_url: str
    extra: list[str] = field(default_factory=list)
    port: int = field(default_factory=free_port)
    users: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen | None = None
    env: dict[str, str] | None = None  # the server's environment (None: the test's own)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.dir / "server.log"

    names: dict[str, str] = field(default_factory=dict)

    def add_user(self, name: str, *, admin: bool = False) -> str:
        """A fresh user for the logical ``name`` (alice, bob, root); returns its password."""
        from faice.agency.auth import add_user
        from faice.agency.db import Database

        real = f"{name}-{secrets.token_hex(3)}"
        password = f"{name}-pw-{secrets.token_hex(8)}"
        db = Database(self.db_url)
        try:
            add_user(db, real, password, admin=admin)
        finally:
            db.close()
        self.names[name] = real
        self.users[name] = password
        return password

    def name(self, logical: str) -> str:
        return self.names[logical]

    def with_fresh_users(self) -> AgencyServer:
        """The same running server seen by new users alice, bob and root (admin)."""
        view = AgencyServer(self.dir, self.db_url, self.extra, self.port, {}, self.proc, {})
        view.owner = False
        for name in ("alice", "bob"):
            view.add_user(name)
        view.add_user("root", admin=True)
        return view

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "faice", "agency", "serve", "--db", self.db_url, "--host", "127.0.0.1",
                 "--port", str(self.port), *self.extra],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=self.env,
            )
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"agency exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                requests.get(self.url + "/", timeout=1)
                return
            except requests.ConnectionError:
                time.sleep(0.1)
        raise AssertionError("agency did not start:\n" + self.log.read_text())

    owner: bool = True

    def stop(self, sig: int = signal.SIGTERM) -> None:
        assert self.owner, "stop the server through the test's own make_agency"
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    # ------------------------------------------------------------ requests
    def auth(self, user: str | None) -> tuple[str, str] | None:
        return (self.names[user], self.users[user]) if user else None

    def get(self, path: str, user: str | None = "alice", **kwargs) -> requests.Response:
        return requests.get(self.url + path, auth=self.auth(user), timeout=30, **kwargs)

    def delete(self, path: str, user: str | None = "alice") -> requests.Response:
        return requests.delete(self.url + path, auth=self.auth(user), timeout=30)

    def post_red(self, red: Any, user: str | None = "alice", **params) -> requests.Response:
        body = red if isinstance(red, (bytes, str)) else json.dumps(red)
        return requests.post(self.url + "/red", data=body, params=params, auth=self.auth(user), timeout=30,
                             headers={"Content-Type": "application/json"})

    def submit(self, red: dict, user: str = "alice", **params) -> str:
        response = self.post_red(red, user, **params)
        assert response.status_code == 200, response.text
        return response.json()["experimentId"]

    def batch_ids(self, experiment_id: str, user: str = "alice") -> list[str]:
        response = self.get("/batches", user, params={"experimentId": experiment_id, "ascending": "1"})
        assert response.status_code == 200, response.text
        return [b["_id"] for b in sorted(response.json(), key=lambda b: b["batchesListIndex"])]

    def wait_state(self, batch_id: str, states=FINAL, user: str = "alice", timeout: float = 90) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            batch = self.get(f"/batches/{batch_id}", user).json()
            if batch["state"] in states:
                return batch
            time.sleep(0.2)
        raise AssertionError(f"batch {batch_id} still {batch['state']} after {timeout}s:\n{self.log.read_text()[-3000:]}")


def _remove_batch_containers(batch_ids: list[str]) -> None:
    try:
        import docker

        client = docker.from_env(timeout=30)
        for batch_id in batch_ids:
            remove_labelled(client, f"org.faice.batch={batch_id}")
        client.close()
    except Exception:
        pass


def _all_batch_ids(server: AgencyServer) -> list[str]:
    if not server.db_url.startswith("sqlite:///"):
        return []
    import sqlite3

    path = server.db_url[len("sqlite:///"):]
    if not os.path.exists(path):
        return []
    conn = sqlite3.connect(path)
    try:
        return [r[0] for r in conn.execute("SELECT id FROM batches")]
    except sqlite3.Error:
        return []
    finally:
        conn.close()


def _factory(base: Path):
    servers: list[AgencyServer] = []

    def make(*extra: str, db_url: str | None = None, start: bool = True, env: dict[str, str] | None = None) -> AgencyServer:
        directory = base / f"agency{len(servers)}"
        directory.mkdir()
        server = AgencyServer(directory, db_url or f"sqlite:///{directory / 'agency.db'}", list(extra), env=env)
        if not db_url or db_url.startswith("sqlite"):
            server.extra += ["--workdir", str(directory / "work")]
        if "--secret-key-file" not in extra:
            server.extra += ["--secret-key-file", str(directory / "agency.key")]
        for name in ("alice", "bob"):
            server.add_user(name)
        server.add_user("root", admin=True)
        servers.append(server)
        if start:
            server.start()
        return server

    return make, servers


def _stop_all(servers: list[AgencyServer]) -> None:
    for server in servers:
        server.stop()
        _remove_batch_containers(_all_batch_ids(server))


@pytest.fixture
def make_agency(tmp_path):
    """Factory: ``make_agency(*extra_args, db_url=None, env=None)`` → a started server of its own with
    users alice and bob (plain) and root (admin); stopped after the test."""
    make, servers = _factory(tmp_path)
    yield make
    _stop_all(servers)


@pytest.fixture(scope="module")
def _paused_server(tmp_path_factory):
    make, servers = _factory(tmp_path_factory.mktemp("paused"))
    yield make("--paused")
    _stop_all(servers)


@pytest.fixture(scope="module")
def _running_server(tmp_path_factory, test_image):
    make, servers = _factory(tmp_path_factory.mktemp("running"))
    yield make("--parallel", "2")
    _stop_all(servers)


@pytest.fixture
def paused_agency(_paused_server) -> AgencyServer:
    """The module's server that stores work but starts no batch (no Docker needed), seen by
    users of this test only."""
    return _paused_server.with_fresh_users()


@pytest.fixture
def agency(_running_server) -> AgencyServer:
    """The module's server that runs batches in Docker (two at a time), fresh users."""
    return _running_server.with_fresh_users()


# ---------------------------------------------------------------- PostgreSQL


class PgCluster:
    """A private PostgreSQL 15 cluster (Debian's package) in a temp dir: data, socket and log
    there, 127.0.0.1 and a free port only, password auth. Restarting it disturbs nobody else."""

    def __init__(self) -> None:
        if not (PG_BIN / "initdb").exists():
            message = "PostgreSQL server binaries missing (apt-get install -y postgresql)"
            if os.environ.get("FAICE_TEST_INFRA") == "required":
                pytest.fail(message, pytrace=False)
            pytest.skip(message)
        self.base = Path(tempfile.mkdtemp(prefix="faice-pg-"))
        shutil.chown(self.base, "postgres", "postgres")
        self.data = self.base / "data"
        self.port = free_port()
        password = "pg-" + secrets.token_hex(8)
        pwfile = self.base / "pw"
        pwfile.write_text(password + "\n")
        shutil.chown(pwfile, "postgres", "postgres")
        self._as_postgres(str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "scram-sha-256", "-U", "postgres",
                          f"--pwfile={pwfile}")
        pwfile.unlink()
        self.url = f"postgresql://postgres:{password}@127.0.0.1:{self.port}/postgres"
        self.start()

    def _as_postgres(self, *command: str, check: bool = True) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *command], check=check, capture_output=True, timeout=120)

    def _pg_ctl(self, *args: str, check: bool = True) -> None:
        self._as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.data), *args, check=check)

    def start(self) -> None:
        self._pg_ctl("-l", str(self.base / "pg.log"), "-w", "-o",
                     f"-k {self.base} -c listen_addresses=127.0.0.1 -p {self.port}", "start")

    def stop(self, check: bool = True) -> None:
        """Fast shutdown: open connections are terminated, as in a real database restart."""
        self._pg_ctl("-m", "fast", "-w", "stop", check=check)

    def restart(self) -> None:
        self.stop()
        self.start()

    def remove(self) -> None:
        self.stop(check=False)
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url():
    """A private PostgreSQL 15 cluster on 127.0.0.1 (Debian package), stopped afterwards."""
    cluster = PgCluster()
    try:
        yield cluster.url
    finally:
        cluster.remove()


@pytest.fixture
def own_postgres():
    """A cluster of this test's own, which it may stop and restart."""
    cluster = PgCluster()
    try:
        yield cluster
    finally:
        cluster.remove()


@pytest.fixture
def postgres_db(postgres_url):
    """A fresh database on the session's cluster for one test."""
    import psycopg

    name = "faice_" + secrets.token_hex(6)
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield postgres_url.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
