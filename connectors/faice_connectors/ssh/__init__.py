"""``ssh`` (also ``red-connector-ssh``): SFTP transfers and sshfs mounts, on asyncssh alone.

Access keys follow upstream red-connector-ssh (``host``, ``port``, ``auth`` {``username``,
``password`` | ``privateKey``, ``passphrase``}, ``filePath``/``dirPath``, ``writable``,
timeouts) plus host key checking that upstream lacked: ``hostKeyPolicy`` ``accept-new``
(default, like OpenSSH: an unknown key is recorded in ``knownHostsFile``, default faice's
own file; a changed key is refused), ``strict`` (the key must be known) or ``ignore``.
Private keys may be ed25519, ECDSA or RSA, optionally with a passphrase.

- :mod:`.access`: schema, value patterns, credentials, host-key policy, error messages;
- :mod:`.sftp`: one logged-in session per account: every check and transfer of a run uses it;
- :mod:`.transfer`: files and directories over that session;
- :mod:`.sshfs`: ``mount: true``.
"""

from __future__ import annotations

import posixpath
import threading
from pathlib import Path

from faice.connectors import (
    Connector,
    ConnectorFailure,
    Listing,
    Progress,
    listed_dirs,
    listed_files,
    safe_relative,
)
from faice.connectors.scratch import remove_dead_scratch
from faice.connectors.trees import output_tree
from faice_connectors.ssh import transfer
from faice_connectors.ssh.access import MOUNT_EXTRA, check_access_values, remote_path, schema
from faice_connectors.ssh.sftp import RemoteFiles, SftpSessions
from faice_connectors.ssh.sshfs import mount_sshfs, require_programs, unmount

__all__ = ["SshConnector", "check_access_values", "mount_sshfs"]


class SshConnector(Connector):
    """SFTP for transfers and checks; sshfs on the host for ``mount: true``."""

    names = ("ssh", "red-connector-ssh")
    access_schema = {
        "receive-file": schema("filePath"),
        "send-file": schema("filePath"),
        "receive-dir": schema("dirPath"),
        "send-dir": schema("dirPath"),
        "mount-dir": schema("dirPath", **MOUNT_EXTRA),
    }

    def __init__(self, *, timeout: float | None = None) -> None:
        super().__init__(timeout=timeout)
        self._lock = threading.Lock()
        self._mounts: dict[Path, bool] = {}  # mount point → writable
        self._sessions = SftpSessions(timeout)
        remove_dead_scratch()  # secrets a SIGKILLed run left for sshfs

    def _files(self, access) -> RemoteFiles:
        """The account's session (one login, reused by every later check and transfer).
        The host-key file is the access's own ``knownHostsFile``, else the host's
        (:attr:`HostIdentity.known_hosts`)."""
        if not access.get("knownHostsFile"):
            access = {**access, "knownHostsFile": str(self.identity.known_hosts_file())}
        return self._sessions.files(access)

    def validate(self, access, operation, listing=None):
        if operation == "mount-dir":
            require_programs()
        files = self._files(access)
        if operation == "receive-file":
            transfer.expect_kind(files, remote_path(access["filePath"]), "file")
        elif operation == "receive-dir":
            root = remote_path(access["dirPath"])
            transfer.expect_kind(files, root, "directory")
            for rel, _item in listed_files(listing):
                transfer.expect_kind(files, posixpath.join(root, safe_relative(rel)), "file")
        elif operation == "mount-dir" and not access.get("writable"):
            transfer.expect_kind(files, remote_path(access["dirPath"]), "directory")

    def receive_file(self, access, dest: Path, progress: Progress) -> None:
        files = self._files(access)
        remote = remote_path(access["filePath"])
        progress.expect(transfer.expect_kind(files, remote, "file").size or 0)
        files.get(remote, dest, progress)

    def receive_dir(self, access, dest: Path, listing: Listing | None, progress: Progress) -> None:
        files = self._files(access)
        root = remote_path(access["dirPath"])
        transfer.expect_kind(files, root, "directory")
        if listing is not None:
            for rel in listed_dirs(listing):
                (dest / safe_relative(rel)).mkdir(parents=True, exist_ok=True)
            names = [safe_relative(rel) for rel, _item in listed_files(listing)]
            transfer.check_listed_inside(files, root, names)
        else:
            names = transfer.walk_remote(files, root, dest)
        for rel in names:
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            files.get(posixpath.join(root, rel), target, progress)

    def send_file(self, access, src: Path, progress: Progress) -> None:
        remote = remote_path(access["filePath"])
        transfer.refuse_escaping_link(src, Path(src).parent)
        files = self._files(access)
        transfer.makedirs(files, posixpath.dirname(remote))
        transfer.put(files, src, remote, progress)

    def send_dir(self, access, src: Path, listing: Listing | None, progress: Progress) -> None:
        root = remote_path(access["dirPath"])
        tree = output_tree(src, listing)  # links out of the output are refused, links inside copied
        files = self._files(access)
        transfer.makedirs(files, root)
        for rel in tree.dirs:
            transfer.makedirs(files, posixpath.join(root, rel))
        for item in tree.files:
            transfer.put(files, item.path, posixpath.join(root, item.rel), progress)

    def mount_dir(self, access, mountpoint: Path, writable: bool) -> None:
        require_programs()
        writable = bool(writable or access.get("writable", False))
        remote = remote_path(access["dirPath"])
        # Log in over SFTP first: host key policy, credentials and the remote directory are
        # checked with clear messages (ssh's own go to sshfs's pty and are lost).
        files = self._files(access)
        if writable:
            transfer.makedirs(files, remote)
        else:
            transfer.expect_kind(files, remote, "directory")
        mount_sshfs(files.access, remote, Path(mountpoint), writable, timeout=float(self.timeout or 60))
        with self._lock:
            self._mounts[Path(mountpoint)] = writable

    def umount_dir(self, mountpoint: Path) -> None:
        with self._lock:
            writable = self._mounts.pop(Path(mountpoint), None)
        if not unmount(Path(mountpoint)) and writable:
            # Something still used the mount: it is only detached, and writes through it
            # may not have reached the remote side yet (upstream ignored this, flaw 21).
            raise ConnectorFailure(f"the writable mount {mountpoint} was busy and could only be detached "
                                   "lazily; files written through it may not have reached the remote directory")

    def close(self) -> None:
        with self._lock:
            mounts, self._mounts = list(self._mounts), {}
        for mountpoint in mounts:
            try:
                unmount(mountpoint)
            except ConnectorFailure:
                pass
        self._sessions.close()
