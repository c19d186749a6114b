"""Shared fixtures: the real test services started by ``scripts/infra.sh up``.

A test that needs a service asks for its fixture. When the infrastructure is missing the
test is skipped, or fails when ``FAICE_TEST_INFRA=required`` (``scripts/test.sh`` and CI
set that, so a broken service can never turn into a silently skipped test).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

# The shared helpers (tests/support/*.py) are imported by basename from every test folder.
sys.path.insert(0, str(Path(__file__).resolve().parent / "support"))

# The agency's fixtures (a real ``faice agency serve``, PostgreSQL), for tests/agency/ and
# tests/engines/agency/: tests/support/agency_fixtures.py.
pytest_plugins = ["agency_fixtures"]

try:  # tests/ is a package
    from tests import infra as _infra
except ImportError:  # tests/ is on sys.path (pytest's rootdir-less "prepend" import mode)
    import infra as _infra

MARKERS = {
    "docker": "needs the Docker engine and the faice-test images",
    "ssh": "needs the test sshd (127.0.0.1:2222)",
    "http": "needs the test nginx (127.0.0.1:8088 / 8443)",
    "s3": "needs the moto S3 servers (127.0.0.1:5055 / 5056)",
    "slurm": "needs the single-node Slurm cluster",
    "slow": "takes more than a few seconds",
    "upstream": "runs upstream cc-faice 9.3.0 (installs it into $FAICE_INFRA_DIR/upstream-venv once)",
    "foreign_records": "writes run directories by hand (hostile or partial records): not checked against the schema",
    "services": "uses a test service (set by collection from the markers above and the service fixtures)",
}
SERVICE_MARKERS = {"docker", "ssh", "http", "s3", "slurm", "upstream"}
# A test asking for one of these fixtures (directly or through another fixture) uses a service.
SERVICE_FIXTURES = {"infra", "docker_client", "test_image", "user_image", "ssh_server", "http_server",
                    "s3_server", "s3_bucket", "slurm"}


def pytest_configure(config: pytest.Config) -> None:
    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")
    # faice remembers tools cwltool accepted (faice.cwl.checked); keep that out of the
    # user's cache, and inherited by every faice subprocess the tests start.
    if "FAICE_CACHE_DIR" not in os.environ:
        config._faice_cache_dir = tempfile.mkdtemp(prefix="faice-test-cache-")
        os.environ["FAICE_CACHE_DIR"] = config._faice_cache_dir


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that needs a test service ``services``: scripts/test.sh runs those on
    one Python only, and the service-free rest on every Python."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & SERVICE_FIXTURES or any(item.get_closest_marker(m) for m in SERVICE_MARKERS):
            item.add_marker("services")


def pytest_unconfigure(config: pytest.Config) -> None:
    cache_dir = getattr(config, "_faice_cache_dir", None)
    if cache_dir:
        shutil.rmtree(cache_dir, ignore_errors=True)
        os.environ.pop("FAICE_CACHE_DIR", None)


@pytest.fixture(autouse=True)
def _records_match_the_schema(request: pytest.FixtureRequest):
    """After a test that used tmp_path: every faice record it left must match the schema."""
    # Asked for before the test, so that tmp_path outlives this fixture's teardown.
    wanted = "tmp_path" in request.fixturenames and not request.node.get_closest_marker("foreign_records")
    root = request.getfixturevalue("tmp_path") if wanted else None
    yield
    if root is None:
        return
    try:
        from tests.records_check import record_problems
    except ImportError:
        from records_check import record_problems
    problems = record_problems(root)
    assert not problems, "records that do not match schemas/faice-records.json:\n" + "\n".join(problems[:10])


@pytest.fixture(autouse=True)
def _in_an_empty_working_directory(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Every test, and every faice it starts, runs in a fresh empty directory: no test may
    depend on what the checkout holds (the README's demo leaves ./faice-runs there, which
    `faice status` and `faice list` read). Paths to repository files must be absolute."""
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))


@pytest.fixture
def optional_extra():
    """``optional_extra("matplotlib", "plot")``: the module of an optional extra. Without it
    the test is skipped, or fails when the test infrastructure is required: scripts/test.sh
    and CI install every extra (the ``test`` extra lists them), so none is skipped there."""
    import importlib

    def load(module: str, extra: str):
        try:
            return importlib.import_module(module)
        except ImportError as exc:
            unavailable(f"the optional extra faice[{extra}] is not installed (pip install 'faice[{extra}]'): {exc}")

    return load


def unavailable(what: str) -> None:
    """Skip the test, or fail it when the infrastructure is required."""
    message = f"test infrastructure unavailable: {what} (start it with scripts/infra.sh up, or run scripts/test.sh)"
    if os.environ.get("FAICE_TEST_INFRA") == "required":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _require_port(host: str, port: int, name: str) -> None:
    if not _infra.port_open(host, port):
        unavailable(f"{name} does not answer on {host}:{port}")


def _require_urls(name: str, *urls: str) -> None:
    for url in urls:
        host, port = url.split("://", 1)[1].split(":")
        _require_port(host, int(port), name)


# ---------------------------------------------------------------- services


@pytest.fixture(scope="session")
def infra() -> _infra.Infra:
    found = _infra.load()
    if found is None:
        unavailable(f"no FAICE_TEST_* variables and no {_infra.state_dir() / 'env.json'}")
    return found


@pytest.fixture(scope="session")
def docker_client():
    try:
        import docker

        client = docker.from_env(timeout=120)
        client.ping()
    except Exception as exc:  # ImportError, DockerException, connection errors
        unavailable(f"Docker engine: {exc}")
    yield client
    client.close()


def _image(docker_client, name: str) -> str:
    import docker

    try:
        docker_client.images.get(name)
    except docker.errors.ImageNotFound:
        unavailable(f"image {name} is missing")
    return name


@pytest.fixture(scope="session")
def test_image(infra, docker_client) -> str:
    """faice-test/base:bookworm: Debian minbase with python3, sshfs, fuse3, openssh-client."""
    return _image(docker_client, infra.image)


@pytest.fixture(scope="session")
def user_image(infra, docker_client) -> str:
    """faice-test/user:bookworm: the base image running as user cc (uid/gid 1000) in /home/cc."""
    return _image(docker_client, infra.user_image)


@pytest.fixture(scope="session")
def ssh_server(infra) -> _infra.SshServer:
    server = _infra.ssh_server(infra)
    _require_port(server.host, server.port, "sshd")
    return server


@pytest.fixture(scope="session")
def http_server(infra) -> _infra.HttpServer:
    server = _infra.http_server(infra)
    _require_urls("nginx", server.url, server.https_url)
    return server


@pytest.fixture(scope="session")
def s3_server(infra) -> _infra.S3Server:
    server = _infra.s3_server(infra)
    _require_urls("moto S3", server.url, server.auth_url)
    return server


@pytest.fixture
def s3_bucket(s3_server) -> str:
    """A fresh, empty bucket on the open S3 server, removed with its objects afterwards."""
    client = s3_server.client()
    name = f"faice-test-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=name)
    yield name
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
        for obj in page.get("Contents", []):
            client.delete_object(Bucket=name, Key=obj["Key"])
    client.delete_bucket(Bucket=name)


@pytest.fixture(scope="session")
def slurm(infra) -> _infra.Slurm:
    if infra.get("SLURM") != "1":
        pytest.skip("Slurm is disabled in this test infrastructure (FAICE_INFRA_SLURM=0)")
    if shutil.which("sinfo") is None:
        unavailable("the Slurm client (sinfo) is not installed")
    probe = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0 or not probe.stdout.strip():
        unavailable(f"Slurm does not answer: {probe.stderr.strip() or probe.stdout.strip()}")
    return _infra.Slurm(partition=infra.get("SLURM_PARTITION", "debug"))


@pytest.fixture(scope="session")
def test_labels() -> dict[str, str]:
    """Labels to put on every container a test creates (docker run --label / labels=)."""
    return _infra.container_labels()


@pytest.fixture(scope="session", autouse=True)
def _remove_test_containers():
    """Remove test containers left behind: every one labelled with this session, and stopped
    ones labelled org.faice.test (without a session) that are older than a minute. Running
    containers of other, concurrent pytest sessions are never touched."""
    yield
    if not (os.environ.get("DOCKER_HOST") or os.path.exists("/var/run/docker.sock")):
        return
    try:
        import docker

        client = docker.from_env(timeout=30)
    except Exception:  # no docker SDK or no engine
        return
    mine = {"label": f"{_infra.SESSION_LABEL}={_infra.SESSION}"}
    stopped = {"label": _infra.TEST_LABEL, "status": ["created", "exited", "dead"]}
    cutoff = datetime.now(timezone.utc) - timedelta(minutes=1)
    try:
        for filters in (mine, stopped):
            for container in client.containers.list(all=True, filters=filters, ignore_removed=True):
                created = datetime.fromisoformat(container.attrs["Created"][:19]).replace(tzinfo=timezone.utc)
                if filters is stopped and (_infra.SESSION_LABEL in container.labels or created > cutoff):
                    continue
                try:
                    container.remove(force=True)
                except Exception:  # already gone
                    pass
    except Exception:  # the engine went away: nothing to clean
        pass
    finally:
        client.close()


# ---------------------------------------------------------------- keyring


def _reset_keyring(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the keyring module pick its backend again (from the pinned environment)."""
    try:
        import keyring.core
    except ImportError:
        return
    monkeypatch.setattr(keyring.core, "_keyring_backend", None)


@pytest.fixture
def keyring_env(tmp_path, monkeypatch) -> dict[str, str]:
    """A real, file-backed keyring private to this test (keyrings.alt PlaintextKeyring).

    Returns the full environment, to pass to subprocesses.
    """
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyrings.alt.file.PlaintextKeyring")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    _reset_keyring(monkeypatch)
    return dict(os.environ)


@pytest.fixture
def no_keyring_env(tmp_path, monkeypatch) -> dict[str, str]:
    """No keyring backend at all (keyring.backends.fail.Keyring): every call raises."""
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.fail.Keyring")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    _reset_keyring(monkeypatch)
    return dict(os.environ)
