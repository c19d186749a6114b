"""Remote links in an ssh ``receive-dir`` (issues 12.3, 15.3) against the real sshd.

Links whose target stays inside the received directory are followed; a link that leaves
it, dangles or loops fails the input with a message naming the link. Before, every link
was silently dropped and the batch ran on partial data.
"""

from __future__ import annotations

import os
import shutil
import uuid

import pytest

from faice.connectors.staging import ConnectorRequest, StagingSession
from faice.errors import ConnectorError

pytestmark = pytest.mark.ssh


@pytest.fixture
def remote_tree(ssh_server):
    """``~/data/<prefix>/tree`` of the password user: a file, a subdirectory, and links."""
    base = ssh_server.home / "data" / f"links-{uuid.uuid4().hex[:10]}"
    tree = base / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "inner.txt").write_text("inner")
    (tree / "top.txt").write_text("top")
    (base / "secret.txt").write_text("outside the received directory")
    os.symlink("sub/inner.txt", tree / "file-link")
    os.symlink("sub", tree / "dir-link")
    for path in [base, *base.rglob("*")]:
        os.lchown(path, *_ids(ssh_server.user))
    yield tree
    shutil.rmtree(base, ignore_errors=True)


def _ids(user: str) -> tuple[int, int]:
    import pwd

    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid


def _access(ssh_server, tree):
    return {"host": ssh_server.host, "port": ssh_server.port,
            "auth": {"username": ssh_server.user, "password": ssh_server.password},
            "hostKeyPolicy": "ignore", "dirPath": str(tree.relative_to(ssh_server.home))}


def _add_link(ssh_server, link, target):
    os.symlink(target, link)
    os.lchown(link, *_ids(ssh_server.user))


def test_links_inside_the_root_are_followed(ssh_server, remote_tree, tmp_path):
    with StagingSession(tmp_path / "w") as session:
        got = session.stage_in(ConnectorRequest("i", "ssh", _access(ssh_server, remote_tree)), "Directory")
        assert (got / "file-link").read_text() == "inner"
        assert (got / "dir-link" / "inner.txt").read_text() == "inner"
        assert (got / "sub" / "inner.txt").read_text() == "inner"
        assert (got / "top.txt").read_text() == "top"


@pytest.mark.parametrize("target", ["../../secret.txt", "/etc/passwd", "../..", "missing-target"],
                         ids=["sibling-file", "absolute", "parent-dir", "dangling"])
def test_links_leaving_the_root_are_refused_by_name(ssh_server, remote_tree, tmp_path, target):
    _add_link(ssh_server, remote_tree / "sub" / "escape", target)
    with StagingSession(tmp_path / "w") as session, pytest.raises(ConnectorError) as err:
        session.stage_in(ConnectorRequest("batches[0].inputs.d", "ssh", _access(ssh_server, remote_tree)), "Directory")
    message = str(err.value)
    assert "batches[0].inputs.d" in message and "/escape'" in message, message
    assert not [p for p in (tmp_path / "w").rglob("*") if p.is_file() and p.read_bytes().startswith(b"outside")]
    assert not list((tmp_path / "w").rglob("passwd"))


def test_link_loop_is_refused(ssh_server, remote_tree, tmp_path):
    _add_link(ssh_server, remote_tree / "sub" / "again", "..")
    with StagingSession(tmp_path / "w") as session, pytest.raises(ConnectorError, match="/again' loops"):
        session.stage_in(ConnectorRequest("i", "ssh", _access(ssh_server, remote_tree)), "Directory")


def test_listed_file_behind_an_outside_link_is_refused(ssh_server, remote_tree, tmp_path):
    _add_link(ssh_server, remote_tree / "leak.txt", "../secret.txt")
    request = ConnectorRequest("batches[0].inputs.d", "ssh", _access(ssh_server, remote_tree),
                               listing=[{"class": "File", "basename": "leak.txt"}])
    with StagingSession(tmp_path / "w") as session, pytest.raises(ConnectorError, match="leak.txt"):
        session.stage_in(request, "Directory")


def test_output_link_to_a_host_file_is_not_sent(ssh_server, tmp_path):
    """``results/leak -> a host secret`` never reaches the server through an ssh output."""
    secret = tmp_path / "host-secret"
    secret.write_text("host private key")
    results = tmp_path / "results"
    results.mkdir()
    (results / "ok.txt").write_text("result")
    os.symlink(secret, results / "leak")
    remote = f"data/out-{uuid.uuid4().hex[:10]}"
    access = {"host": ssh_server.host, "port": ssh_server.port,
              "auth": {"username": ssh_server.user, "password": ssh_server.password}, "hostKeyPolicy": "ignore"}
    try:
        with StagingSession(tmp_path / "w") as session:
            with pytest.raises(ConnectorError, match="leak"):
                session.send(ConnectorRequest("batches[0].outputs.r", "ssh", {**access, "dirPath": remote}),
                             "Directory", results)
            with pytest.raises(ConnectorError, match="leak"):
                session.send(ConnectorRequest("batches[0].outputs.f", "ssh", {**access, "filePath": remote + "/f"}),
                             "File", results / "leak")
        sent = [p for p in (ssh_server.home / remote).rglob("*") if p.is_file()] if (ssh_server.home / remote).exists() else []
        assert not [p for p in sent if p.read_text() == "host private key"]
    finally:
        shutil.rmtree(ssh_server.home / remote, ignore_errors=True)
