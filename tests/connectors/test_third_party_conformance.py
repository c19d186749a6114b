"""A connector plugin outside faice's tree runs the shipped conformance suite as a third party
would: its own package (a module and a ``.dist-info`` entry point, as pip leaves them), its
own test module importing ``faice.connectors.testing``, run by pytest in another process."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from connector_plugins import environment_with, install_connector

PLUGIN = '''
"""kv: keys in a store directory, guarded by a token file (a stand-in for a key-value server)."""
import shutil
from pathlib import Path

from faice.connectors import Connector, ConnectorFailure, listed_dirs, listed_files


class KvConnector(Connector):
    names = ("kv",)
    access_schema = {
        "type": "object",
        "properties": {"store": {"type": "string"}, "key": {"type": "string"}, "token": {"type": "string"}},
        "required": ["store", "key", "token"],
        "additionalProperties": False,
    }

    def _path(self, access):
        store = Path(access["store"])
        if (store / ".token").read_text() != access["token"]:
            raise ConnectorFailure("the store refused the token")
        return store / access["key"]

    def validate(self, access, operation, listing=None):
        path = self._path(access)
        if operation.startswith("receive") and not path.exists():
            raise ConnectorFailure(f"no key {access['key']!r} in the store")

    def receive_file(self, access, dest, progress):
        shutil.copyfile(self._path(access), dest)

    def receive_dir(self, access, dest, listing, progress):
        root = self._path(access)
        if listing is None:
            shutil.copytree(root, dest, dirs_exist_ok=True)
            return
        for rel in listed_dirs(listing):
            (dest / rel).mkdir(parents=True, exist_ok=True)
        for rel, _item in listed_files(listing):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(root / rel, dest / rel)

    def send_file(self, access, src, progress):
        path = self._path(access)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = Path(src).read_bytes()
        path.write_bytes(data[:BROKEN_CUT] if BROKEN_CUT else data)

    def send_dir(self, access, src, listing, progress):
        shutil.copytree(src, self._path(access), dirs_exist_ok=True)


BROKEN_CUT = 0
'''

TESTS = '''
import pytest

from faice.connectors.testing import ConnectorConformance


class Place:
    def __init__(self, store):
        self.store = store

    def file(self, name):
        return {"store": str(self.store), "key": name, "token": "t0ken"}

    dir = file

    def missing_file(self):
        return self.file("does-not-exist")

    def bad_credentials(self, operation):
        return {"store": str(self.store), "key": "x", "token": "wrong-secret-value"}

    def unreachable(self):
        return None


class TestKvConnector(ConnectorConformance):
    command = "kv"

    @pytest.fixture
    def place(self, tmp_path_factory):
        store = tmp_path_factory.mktemp("store")
        (store / ".token").write_text("t0ken")
        return Place(store)
'''


def install_plugin(root: Path, *, broken: bool = False) -> Path:
    """The plugin as pip would leave it, plus its own tests in a directory of their own."""
    site = root / "site"
    site.mkdir(parents=True)
    source = textwrap.dedent(PLUGIN).replace("BROKEN_CUT = 0", f"BROKEN_CUT = {1000 if broken else 0}")
    install_connector(site, "kv", source, "KvConnector")
    tests = root / "plugin-tests"
    tests.mkdir()
    (tests / "test_kv.py").write_text(textwrap.dedent(TESTS))
    return site


def run_suite(root: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(root),
                           str(root / "plugin-tests")], cwd=root, env=environment_with(site), capture_output=True,
                          text=True, timeout=300)


def test_a_plugin_outside_the_tree_passes_the_shipped_suite(tmp_path):
    site = install_plugin(tmp_path)
    result = run_suite(tmp_path, site)
    assert result.returncode == 0, result.stdout + result.stderr
    assert " passed" in result.stdout and "failed" not in result.stdout


@pytest.mark.parametrize("broken", [True])
def test_the_shipped_suite_fails_a_plugin_that_loses_data(tmp_path, broken):
    site = install_plugin(tmp_path, broken=broken)
    result = run_suite(tmp_path, site)
    assert result.returncode == 1
    assert "test_file_round_trip FAILED" in result.stdout or "failed" in result.stdout
