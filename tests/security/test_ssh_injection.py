"""RED access values never add options to sshfs/ssh command lines (issue 12.2).

A comma in ``knownHostsFile``, or a backslash before a comma in ``ciphers``, used to add a
FUSE ``-o`` option such as ``ssh_command=`` to sshfs, which then ran the named program on
the host. Each case runs against the real sshd + sshfs with a canary program that would
leave a file behind if it ever ran.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import pytest

from faice.connectors.staging import ConnectorRequest, StagingSession
from faice.errors import ConnectorError

pytestmark = pytest.mark.ssh


@pytest.fixture
def canary(tmp_path):
    """A program that leaves ``ran`` behind when executed (by sshfs as its ssh_command)."""
    ran = Path(f"/tmp/faice-canary-{uuid.uuid4().hex[:10]}")
    program = tmp_path / "canary-ssh"
    program.write_text(f"#!/bin/sh\ntouch '{ran}'\nexit 1\n")
    program.chmod(0o755)
    yield program, ran
    ran.unlink(missing_ok=True)


@pytest.fixture
def known_hosts(ssh_server, tmp_path):
    path = tmp_path / "known_hosts"
    shutil.copy(ssh_server.known_hosts, path)
    return path


def _access(ssh_server, known_hosts, **extra):
    # accept-new: the login before the mount records the key in whatever file is named,
    # so a hostile knownHostsFile reaches sshfs (as it did before values were checked)
    return {"host": ssh_server.host, "port": ssh_server.port,
            "auth": {"username": ssh_server.user, "password": ssh_server.password},
            "hostKeyPolicy": "accept-new", "knownHostsFile": str(known_hosts), "dirPath": "data", **extra}


def _hostile(case: str, known_hosts: Path, program: Path) -> dict:
    if case == "knownHostsFile-comma":
        return {"knownHostsFile": f"{known_hosts},ssh_command={program}"}
    if case == "ciphers-backslash-comma":
        return {"ciphers": f"aes128-ctr\\,ssh_command={program}"}
    if case == "ciphers-list-comma":
        return {"ciphers": ["aes128-ctr", f"aes256-ctr,ssh_command={program}"]}
    if case == "knownHostsFile-newline":
        return {"knownHostsFile": f"{known_hosts}\nProxyCommand {program}"}
    raise AssertionError(case)


CASES = ["knownHostsFile-comma", "ciphers-backslash-comma", "ciphers-list-comma", "knownHostsFile-newline"]


@pytest.mark.parametrize("case", CASES)
def test_hostile_mount_option_is_refused_and_never_runs(ssh_server, known_hosts, canary, tmp_path, case):
    program, ran = canary
    access = _access(ssh_server, known_hosts, **_hostile(case, known_hosts, program))
    mnt = tmp_path / "mnt"
    with StagingSession(tmp_path / "w") as session, pytest.raises(ConnectorError) as err:
        session.mount_dir(ConnectorRequest("batches[0].inputs.d", "ssh", access, mount=True), mnt, writable=False)
    assert not ran.exists(), "the injected command ran"
    key = case.split("-")[0]
    assert key in str(err.value), f"the error names the key: {err.value}"
    assert not os.path.ismount(mnt)


@pytest.mark.parametrize("case", CASES)
def test_values_are_checked_where_sshfs_is_built(ssh_server, known_hosts, canary, tmp_path, case):
    """The same values reaching the mount code without the schema check are refused too."""
    from faice.connectors import ConnectorFailure
    from faice_connectors.ssh import mount_sshfs

    program, ran = canary
    access = _access(ssh_server, known_hosts, **_hostile(case, known_hosts, program))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with pytest.raises(ConnectorFailure):
        mount_sshfs(access, "data", mnt, False, timeout=10)
    assert not ran.exists(), "the injected command ran"
    assert not os.path.ismount(mnt)


def test_username_and_host_are_not_in_sshfs_arguments(ssh_server, known_hosts, tmp_path):
    """A ``{{variable}}`` username would show in ``ps``: sshfs and its ssh get an alias."""
    mnt = tmp_path / "mnt"
    with StagingSession(tmp_path / "w") as session:
        session.mount_dir(ConnectorRequest("i", "ssh", _access(ssh_server, known_hosts), mount=True), mnt,
                          writable=False)
        assert os.path.ismount(mnt)
        lines = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    argv = (entry / "cmdline").read_bytes().split(b"\0")
                except OSError:
                    continue
                if argv and os.path.basename(argv[0]) in (b"sshfs", b"ssh"):
                    lines.append(b" ".join(argv).decode(errors="replace"))
        mine = [line for line in lines if str(mnt) in line or "faice-sshfs-target" in line]
        assert mine, f"the mount's sshfs is visible: {lines}"
        assert not [line for line in mine if ssh_server.user in line], mine
