"""Tree removal never deletes through a still-mounted sshfs directory (issue 15.6).

A staging or run directory is removed with :func:`remove_tree`; if an sshfs mount below it
could not be unmounted, walking into it would delete the remote data. The real test sshd
is mounted under the tree, holding a canary file; removing the parent leaves it intact.
"""

from __future__ import annotations

import os
import shutil
import uuid

import pytest

from faice.connectors.staging import ConnectorRequest, StagingSession
from faice.descriptors import remove_tree

pytestmark = pytest.mark.ssh


@pytest.fixture
def remote_canary(ssh_server):
    folder = ssh_server.home / "data" / f"canary-{uuid.uuid4().hex[:10]}"
    folder.mkdir(parents=True)
    (folder / "keep").mkdir()
    (folder / "keep" / "canary.txt").write_text("remote data")
    for path in (folder, folder / "keep", folder / "keep" / "canary.txt"):
        shutil.chown(path, ssh_server.user, ssh_server.user)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_remove_tree_stops_at_a_mounted_sshfs(ssh_server, remote_canary, tmp_path):
    access = {"host": ssh_server.host, "port": ssh_server.port,
              "auth": {"username": ssh_server.user, "password": ssh_server.password},
              "hostKeyPolicy": "ignore", "dirPath": str(remote_canary.relative_to(ssh_server.home)), "writable": True}
    parent = tmp_path / "run"
    mnt = parent / "mounts" / "data"
    (parent / "local").mkdir(parents=True)
    (parent / "local" / "scratch.txt").write_text("local scratch")
    (parent / "local").chmod(0o555)  # read-only staging dirs are removed too
    session = StagingSession(tmp_path / "w")
    try:
        session.mount_dir(ConnectorRequest("i", "ssh", access, mount=True), mnt, writable=True)
        assert os.path.ismount(mnt) and (mnt / "keep" / "canary.txt").read_text() == "remote data"
        kept = remove_tree(parent)
        assert (remote_canary / "keep" / "canary.txt").read_text() == "remote data", "remote data deleted"
        assert kept == [mnt], "what could not be removed is reported"
        assert os.path.ismount(mnt)
        assert not (parent / "local").exists(), "everything else is removed"
    finally:
        session.close()
    assert not os.path.ismount(mnt)
    assert remove_tree(parent) == [] and not parent.exists()
