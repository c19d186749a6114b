"""Files reached through directory descriptors, so that nobody can steer faice by swapping a
name for a symbolic link between a check and a use.

A container writes into its batch's directories while faice reads them, and another local
user can plant names in a shared ``$TMPDIR``. A path that is checked (``realpath``, ``lstat``)
and then used again by name can lead somewhere else by the time it is used. Here every path
is walked one component at a time relative to an open directory (``openat`` with
``O_NOFOLLOW``): :func:`open_beneath` follows a symbolic link only while it stays beneath
the starting directory (what ``openat2``'s ``RESOLVE_BENEATH`` does, on every kernel), and
:func:`remove_tree` removes with ``unlinkat``/``rmdir`` relative to the open parent,
changing modes only through descriptors of directories this user owns.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from pathlib import Path

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | _CLOEXEC
MAX_LINKS = 40  # symbolic links followed in one path, as the kernel's own limit
MAX_DEPTH = 256  # directory levels removed below a tree's top (one descriptor per level)


class OutsideError(OSError):
    """A path that leads out of its starting directory (``..`` above it, an absolute link,
    too many links)."""


def _parts(relative: str) -> list[str]:
    return [part for part in relative.split("/") if part not in ("", ".")]


def open_beneath(base: Path | str, relative: str, flags: int = os.O_RDONLY) -> int:
    """A descriptor of ``relative`` opened with ``flags`` beneath the directory ``base``.

    ``base`` itself is trusted (faice chose it); every component below it is opened without
    following links, and a link is resolved by hand and followed only while it stays beneath
    ``base``. Raises :class:`OutsideError` for a path leading out, OSError as ``open`` does
    otherwise (FileNotFoundError, ENOTDIR, …)."""
    if relative.startswith("/"):
        raise OutsideError(errno.EXDEV, "an absolute path is not beneath its directory", relative)
    stack = [os.open(base, os.O_RDONLY | os.O_DIRECTORY | _CLOEXEC)]
    try:
        parts = _parts(relative)
        links = 0
        while parts:
            part = parts.pop(0)
            if part == "..":
                if len(stack) == 1:
                    raise OutsideError(errno.EXDEV, "'..' leads out of its directory", relative)
                os.close(stack.pop())
                continue
            last = not parts
            try:
                fd = os.open(part, (flags | os.O_NOFOLLOW | _CLOEXEC) if last else O_DIR, dir_fd=stack[-1])
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
                    raise
                try:
                    target = os.readlink(part, dir_fd=stack[-1])
                except OSError:
                    raise exc from None
                links += 1
                if links > MAX_LINKS:
                    raise OutsideError(errno.ELOOP, "too many symbolic links", relative) from None
                if target.startswith("/"):
                    raise OutsideError(errno.EXDEV, "a symbolic link leads out of its directory", relative) from None
                parts = _parts(target) + parts
                continue
            if last:
                return fd
            stack.append(fd)
        return os.open(".", flags | _CLOEXEC, dir_fd=stack[-1])
    finally:
        for fd in stack:
            os.close(fd)


def read_small_at(dir_fd: int, name: str, limit: int = 4096) -> bytes | None:
    """The regular file ``name`` in the open directory (never through a link) when it holds
    at most ``limit`` bytes; None otherwise (missing, a link, a FIFO, too large)."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | _CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > limit:
            return None
        return os.read(fd, limit)
    finally:
        os.close(fd)


def open_private_dir(parent_fd: int, name: str) -> int | None:
    """A descriptor of the directory ``name`` in ``parent_fd`` when this user owns it and
    nobody else may enter it (what ``mkdtemp`` creates); None otherwise (another user's,
    a link, a file)."""
    try:
        fd = os.open(name, O_DIR, dir_fd=parent_fd)
    except OSError:
        return None
    info = os.fstat(fd)
    if info.st_uid != os.geteuid() or stat.S_IMODE(info.st_mode) & 0o077:
        os.close(fd)
        return None
    return fd


def remove_tree(path: Path | str, *, keep: frozenset[str] = frozenset()) -> list[Path]:
    """Remove a file or directory, also one made read-only; returns what had to stay.

    Never crosses into another file system: a mount point below ``path`` (a still-mounted
    sshfs directory, a bind mount; ``keep`` names more, as real paths) and anything on another
    device stay, so a failed unmount can never turn into deleting remote data. ``path``'s
    parent is trusted; below it nothing is followed by name."""
    path = Path(path)
    try:
        parent = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | _CLOEXEC)
    except OSError:
        return []
    try:
        return remove_entry(parent, path.name, path, keep=keep)
    finally:
        os.close(parent)


def remove_entry(parent_fd: int, name: str, shown: Path, *, keep: frozenset[str] = frozenset(),
                 directory_fd: int | None = None) -> list[Path]:
    """Remove ``name`` in the open directory ``parent_fd`` (``shown`` is its path, for
    messages and mount points). ``directory_fd``: the directory already opened (and checked)
    by the caller, emptied through that descriptor, so a name swapped since cannot redirect it."""
    kept: list[Path] = []
    shown = Path(os.path.realpath(shown.parent)) / name  # mount points are listed by real path
    mounts = keep | frozenset(mount_points_below(shown))
    if directory_fd is None:
        try:
            info = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
        except OSError:
            return []
        if not stat.S_ISDIR(info.st_mode):
            _unlink(parent_fd, name)
            return []
        device = info.st_dev
    else:
        device = os.fstat(directory_fd).st_dev
    _remove_dir(parent_fd, name, shown, device, mounts, kept, 0, directory_fd)
    if kept:
        logging.getLogger("faice").warning(
            "not removed (another file system is mounted there, unmount it first): %s",
            ", ".join(str(p) for p in kept))
    return kept


def _remove_dir(parent_fd: int, name: str, shown: Path, device: int, mounts: frozenset[str],
                kept: list[Path], depth: int, fd: int | None = None) -> bool:
    """Empty and remove the directory ``name`` (``fd``: already open); False when something
    had to stay."""
    if fd is None:
        try:
            fd = os.open(name, O_DIR, dir_fd=parent_fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):  # swapped for a link or a file since
                return _unlink(parent_fd, name)
            return exc.errno == errno.ENOENT
    else:
        fd = os.dup(fd)
    try:
        info = os.fstat(fd)
        if info.st_dev != device or str(shown) in mounts or depth > MAX_DEPTH:
            kept.append(shown)
            return False
        if info.st_uid == os.geteuid() and stat.S_IMODE(info.st_mode) & 0o700 != 0o700:
            os.fchmod(fd, 0o700)  # made read-only for a batch: through the descriptor, never a name
        with os.scandir(fd) as found:
            entries = [(entry.name, _is_dir(entry)) for entry in found]
        complete = True
        for child, is_dir in entries:
            if is_dir or not _unlink(fd, child):
                complete = _remove_dir(fd, child, shown / child, device, mounts, kept, depth + 1) and complete
    finally:
        os.close(fd)
    if complete:
        try:
            os.rmdir(name, dir_fd=parent_fd)
        except FileNotFoundError:
            pass
        except OSError:
            return False
    return complete


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False


def _unlink(dir_fd: int, name: str) -> bool:
    """Remove the non-directory ``name``; False when it is (now) a directory or stays."""
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    except OSError:
        return False
    return True


def mount_points_below(path: Path | str) -> list[str]:
    """The mount points at or below ``path`` (by its real path; deepest first), from
    ``/proc/self/mounts``."""
    root = os.path.realpath(path).rstrip("/")
    found = []
    try:
        with open("/proc/self/mounts", encoding="utf-8") as handle:
            for line in handle:
                fields = line.split()
                if len(fields) > 1:
                    target = fields[1].replace("\\040", " ")
                    if target == root or target.startswith(root + "/"):
                        found.append(target)
    except OSError:
        return []
    return sorted(found, key=len, reverse=True)
