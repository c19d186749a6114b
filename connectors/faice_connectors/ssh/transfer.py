"""Files and directories over one SFTP session: kind checks, remote walks that follow only
links staying inside the received directory, and uploads that readers never see half-written."""

from __future__ import annotations

import posixpath
import stat
from pathlib import Path

from faice.connectors import ConnectorFailure, Progress, safe_relative
from faice_connectors.ssh.sftp import RemoteFiles


def expect_kind(files: RemoteFiles, path: str, kind: str):
    """The attributes of remote ``path``, which must be a ``file`` or a ``directory``."""
    try:
        attrs = files.stat(path)
    except FileNotFoundError:
        raise ConnectorFailure(f"remote {kind} {path!r} does not exist") from None
    except PermissionError:
        raise ConnectorFailure(f"remote {kind} {path!r} is not accessible (permission denied)") from None
    is_dir = stat.S_ISDIR(attrs.permissions or 0)
    if kind == "file" and is_dir:
        raise ConnectorFailure(f"remote path {path!r} is a directory, not a file")
    if kind == "directory" and not is_dir:
        raise ConnectorFailure(f"remote path {path!r} is not a directory")
    return attrs


def makedirs(files: RemoteFiles, path: str) -> None:
    if path in ("", ".", "/"):
        return
    try:
        if stat.S_ISDIR(files.stat(path).permissions or 0):
            return
        raise ConnectorFailure(f"remote path {path!r} exists and is not a directory")
    except FileNotFoundError:
        pass
    makedirs(files, posixpath.dirname(path.rstrip("/")))
    try:
        files.mkdir(path)
    except OSError:
        if not stat.S_ISDIR(files.stat(path).permissions or 0):
            raise


def _inside(path: str, root: str) -> bool:
    root = root.rstrip("/") or "/"
    return path == root or path.startswith(root if root == "/" else root + "/")


def walk_remote(files: RemoteFiles, root: str, dest: Path) -> list[str]:
    """Create the remote tree's directories under ``dest``; return its files (relative).

    Links are followed when their target stays inside ``root`` (a link cycle is refused);
    a link leaving it, or a dangling one, fails the transfer naming the link, so a batch
    never runs on silently partial data.
    """
    real_root = files.realpath(root)
    found: list[str] = []

    def walk(prefix: str, ancestors: frozenset[str]) -> None:
        here = posixpath.join(root, prefix) if prefix else root
        for entry in files.entries(here):
            rel = f"{prefix}{entry.filename}"
            safe_relative(rel)
            mode = entry.attrs.permissions or 0
            real = None
            if stat.S_ISLNK(mode):
                real, mode = _follow_link(files, root, real_root, rel)
            if stat.S_ISDIR(mode):
                real = real or files.realpath(posixpath.join(root, rel))
                if real in ancestors:
                    raise ConnectorFailure(f"remote link {posixpath.join(root, rel)!r} loops back to "
                                           f"{real!r}; refusing to receive an endless tree")
                (dest / rel).mkdir(parents=True, exist_ok=True)
                walk(rel + "/", ancestors | {real})
            elif stat.S_ISREG(mode):
                found.append(rel)

    walk("", frozenset({real_root}))
    return found


def _follow_link(files: RemoteFiles, root: str, real_root: str, rel: str) -> tuple[str, int]:
    """The real path and mode behind remote link ``root/rel``, if it stays inside ``root``."""
    link = posixpath.join(root, rel)
    try:
        real = files.realpath(link)
        mode = files.stat(link).permissions or 0
    except OSError:
        raise ConnectorFailure(f"remote link {link!r} is dangling (its target does not exist)") from None
    if not _inside(real, real_root):
        raise ConnectorFailure(f"remote link {link!r} points to {real!r}, outside the received directory "
                               f"{real_root!r}; only links inside it are followed")
    return real, mode


def check_listed_inside(files: RemoteFiles, root: str, rels: list[str]) -> None:
    """A listed file reached through a link must still lie inside the remote root."""
    real_root = files.realpath(root)
    for rel in rels:
        remote = posixpath.join(root, rel)
        if not stat.S_ISLNK(files.lstat(remote).permissions or 0) and "/" not in rel:
            continue
        real = files.realpath(remote)
        if not _inside(real, real_root):
            raise ConnectorFailure(f"remote path {remote!r} leads to {real!r}, outside the received "
                                   f"directory {real_root!r}; only links inside it are followed")


def refuse_escaping_link(path: Path, root: Path) -> None:
    """An output reached through a link is sent only if the link stays inside ``root``:
    never a host file (``results/leak -> ~/.ssh/id_ed25519``) through an output."""
    real = path.resolve()
    if not real.is_relative_to(root.resolve()):
        raise ConnectorFailure(f"output {path} is a link to {real}, outside {root}; refusing to send it")


def put(files: RemoteFiles, local: Path, remote: str, progress: Progress) -> None:
    """Upload under a hidden temp name, then rename: readers never see a half-written file.

    Whatever stops the upload (an error, Ctrl-C, a cancelled batch) removes the remote
    ``.faice-part`` file before the exception goes on.
    """
    part = posixpath.join(posixpath.dirname(remote), f".{posixpath.basename(remote)}.faice-part")
    try:
        files.put(local, part, progress)
        files.replace(part, remote)
    except BaseException:
        try:
            files.remove(part)
        except Exception:
            pass
        raise
