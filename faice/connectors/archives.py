"""Extract tar (plain, gz, bz2, xz) and zip archives by faice's own rules (public API).

An archive from a RED file is hostile input. Python's own safeguards are not enough:
``tarfile``'s ``data`` filter was bypassed by symlink chains longer than PATH_MAX (the
CVE-2025-4517 family) and does not exist on Debian 12's Python 3.11.2; ``zipfile`` writes
through symbolic links already on disk. So every member is checked here and written with
system calls that never follow a link:

* names: relative, no ``..``, no empty or NUL-containing names, no duplicates (except
  repeated directory entries); a name may not pass through a symbolic link member;
* regular files and directories are kept; set-uid, set-gid, sticky and group/other write bits
  are stripped (the owner can always read and write); owners are never changed;
* symbolic links (tar and zip) are kept only when their target is relative, stays strictly
  inside the destination, and neither points at nor through another link member (no chains);
* hard links (tar) only to a regular file member extracted earlier;
* devices, FIFOs and anything else are refused;
* limits against archive bombs: total uncompressed bytes (default 64 GiB) and member count
  (default 1,000,000), counted on the bytes really written, not only on the headers.

Every directory on the way to a member is opened with ``O_NOFOLLOW | O_DIRECTORY`` relative
to its parent, and files are created with ``O_CREAT | O_EXCL | O_NOFOLLOW``: nothing is ever
written through a link, whatever the archive contains. A refused archive raises
:class:`ArchiveError` naming the member; what was extracted before stays in ``dest`` (faice's
staging removes the whole partial download).
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat
import tarfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from faice.connectors.api import ConnectorFailure

GiB = 1024**3
DEFAULT_MAX_BYTES = 64 * GiB
DEFAULT_MAX_MEMBERS = 1_000_000
TAR_FORMATS = ("tar", "gztar", "bztar", "xztar")
FORMATS = ("zip", *TAR_FORMATS)
CHUNK = 1024 * 1024

_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_O_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


class ArchiveError(ConnectorFailure):
    """An archive (or one of its members) that faice refuses to extract."""


@dataclass
class _Member:
    """One archive member, independent of the archive type."""

    name: str  # as written in the archive, for messages
    kind: str  # file, dir, symlink, hardlink, other
    mode: int
    size: int = 0
    target: str = ""  # link target (symlink text, or hard link member name)
    mtime: float | None = None
    what: str = ""  # for "other": what it is (character device, fifo, ...)


def extract_archive(
    archive: Path | str,
    dest: Path | str,
    archive_format: str,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_members: int = DEFAULT_MAX_MEMBERS,
) -> None:
    """Extract ``archive`` (``zip``, ``tar``, ``gztar``, ``bztar``, ``xztar``) into ``dest``.

    ``dest`` is created if missing. Tar formats are recognised by content, so a ``gztar``
    that is really xz still works. Raises :class:`ArchiveError` (a ``ConnectorFailure``)
    for a member that breaks a rule, a corrupt archive, or a limit.
    """
    if archive_format not in FORMATS:
        raise ArchiveError(f"unknown archive format {archive_format!r} (one of {', '.join(FORMATS)})")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    writer = _Writer(dest, max_bytes=max_bytes, max_members=max_members)
    try:
        if archive_format == "zip":
            _extract_zip(Path(archive), writer)
        else:
            _extract_tar(Path(archive), writer)
        writer.finish()
    finally:
        writer.close()


# ---------------------------------------------------------------------- readers


def _extract_tar(archive: Path, writer: _Writer) -> None:
    try:
        bundle = tarfile.open(archive, mode="r:*")  # noqa: SIM115 (closed by the with below)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ArchiveError(f"cannot read the tar archive: {_reason(exc)}") from None
    with bundle:
        while True:
            try:
                info = bundle.next()
            except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
                raise ArchiveError(f"cannot read the tar archive: {_reason(exc)}") from None
            if info is None:
                return
            member = _tar_member(info)
            if member.kind == "file":
                try:
                    source = bundle.extractfile(info)
                except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
                    raise ArchiveError(f"cannot read member {info.name!r}: {_reason(exc)}") from None
                if source is None:
                    raise ArchiveError(f"cannot read member {info.name!r}")
                with source:
                    writer.add(member, source)
            else:
                writer.add(member, None)
            bundle.members.clear()  # type: ignore[attr-defined]  # streamed: keep memory flat


def _tar_member(info: tarfile.TarInfo) -> _Member:
    common: dict[str, Any] = {"name": info.name, "mode": info.mode, "mtime": info.mtime}
    if info.isreg():
        return _Member(kind="file", size=info.size, **common)
    if info.isdir():
        return _Member(kind="dir", **common)
    if info.issym():
        return _Member(kind="symlink", target=info.linkname, **common)
    if info.islnk():
        return _Member(kind="hardlink", target=info.linkname, **common)
    what = {tarfile.CHRTYPE: "a character device", tarfile.BLKTYPE: "a block device",
            tarfile.FIFOTYPE: "a FIFO"}.get(info.type, f"an entry of tar type {info.type!r}")
    return _Member(kind="other", what=what, **common)


def _extract_zip(archive: Path, writer: _Writer) -> None:
    try:
        bundle = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise ArchiveError(f"cannot read the zip archive: {_reason(exc)}") from None
    with bundle:
        infos = bundle.infolist()
        if len(infos) > writer.max_members:
            raise ArchiveError(f"the archive has {len(infos)} members, more than the limit of {writer.max_members}")
        declared = sum(info.file_size for info in infos)
        if declared > writer.max_bytes:
            raise ArchiveError(f"the archive unpacks to {declared} bytes, more than the limit of {writer.max_bytes}")
        for info in infos:
            member = _zip_member(info)
            try:
                if member.kind == "file":
                    with bundle.open(info) as source:
                        writer.add(member, source)
                elif member.kind == "symlink":
                    with bundle.open(info) as source:
                        member.target = source.read(4097).decode("utf-8", "surrogateescape")
                    writer.add(member, None)
                else:
                    writer.add(member, None)
            except (zipfile.BadZipFile, EOFError, ValueError, NotImplementedError, RuntimeError,
                    zipfile.LargeZipFile) as exc:
                raise ArchiveError(f"cannot read member {info.filename!r}: {_reason(exc)}") from None


def _zip_member(info: zipfile.ZipInfo) -> _Member:
    unix = info.external_attr >> 16
    kind_bits = stat.S_IFMT(unix)
    mtime = None
    try:
        mtime = time.mktime((*info.date_time, 0, 0, -1))
    except (OverflowError, ValueError):
        pass
    common: dict[str, Any] = {"name": info.filename, "mode": stat.S_IMODE(unix) or (0o755 if info.is_dir() else 0o644),
                              "mtime": mtime}
    if info.is_dir() or kind_bits == stat.S_IFDIR:
        return _Member(kind="dir", **common)
    if kind_bits == stat.S_IFLNK:
        return _Member(kind="symlink", size=info.file_size, **common)
    if kind_bits in (0, stat.S_IFREG):
        return _Member(kind="file", size=info.file_size, **common)
    return _Member(kind="other", what=_file_type(kind_bits), **common)


def _file_type(bits: int) -> str:
    return {stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device", stat.S_IFIFO: "a FIFO",
            stat.S_IFSOCK: "a socket"}.get(bits, f"an entry of file type {oct(bits)}")


# ---------------------------------------------------------------------- the writer


class _Writer:
    """Checks members and writes them under ``dest`` without ever following a link."""

    def __init__(self, dest: Path, *, max_bytes: int, max_members: int) -> None:
        self.dest = dest
        self.max_bytes = max_bytes
        self.max_members = max_members
        self.written = 0
        self.members = 0
        self.kinds: dict[str, str] = {}  # normalised name -> kind, of everything extracted
        self.through: set[str] = set()  # names a kept symlink points at or through
        self.dir_modes: list[tuple[str, int]] = []
        self.root = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
        self.last: tuple[str, int] | None = None  # the last directory opened: (name, fd)

    def close(self) -> None:
        if self.last is not None:
            os.close(self.last[1])
        os.close(self.root)

    # ------------------------------------------------------------------ checks

    def add(self, member: _Member, source: IO[bytes] | None) -> None:
        self.members += 1
        if self.members > self.max_members:
            raise ArchiveError(f"the archive has more than {self.max_members} members (the limit)")
        name = self._check_name(member)
        if member.kind == "other":
            raise ArchiveError(f"refusing member {member.name!r}: it is {member.what}")
        previous = self.kinds.get(name)
        if previous is not None and not (previous == "dir" and member.kind == "dir"):
            raise ArchiveError(f"refusing member {member.name!r}: the archive holds this name twice")
        if member.kind == "file":
            if member.size > self.max_bytes - self.written:
                raise self._too_big(member)
            self._write_file(name, member, source)
        elif member.kind == "dir":
            self._make_dirs(name, member)
            self.dir_modes.append((name, _dir_mode(member.mode)))
        elif member.kind == "symlink":
            self._check_symlink(name, member)
            self._link(name, member)
        elif member.kind == "hardlink":
            self._hardlink(name, member)
        self.kinds[name] = member.kind

    def _check_name(self, member: _Member) -> str:
        raw = member.name
        if "\x00" in raw:
            raise ArchiveError(f"refusing member {raw!r}: its name contains a NUL byte")
        if raw.startswith("/") or raw.startswith("\\"):
            raise ArchiveError(f"refusing member {raw!r}: absolute path")
        parts = [p for p in raw.replace("\\", "/").split("/") if p not in ("", ".")]
        if ".." in parts:
            raise ArchiveError(f"refusing member {raw!r}: '..' would leave the destination")
        if not parts:
            if member.kind == "dir":
                return "."
            raise ArchiveError(f"refusing member {raw!r}: empty name")
        name = "/".join(parts)
        for i in range(1, len(parts)):
            if self.kinds.get("/".join(parts[:i])) == "symlink":
                raise ArchiveError(f"refusing member {raw!r}: it lies under the symbolic link {'/'.join(parts[:i])!r}")
        return name

    def _check_symlink(self, name: str, member: _Member) -> None:
        target = member.target
        if not target or "\x00" in target or len(target) > 4095:
            raise ArchiveError(f"refusing symbolic link {member.name!r}: empty or invalid target")
        if target.startswith("/"):
            raise ArchiveError(f"refusing symbolic link {member.name!r} -> {target!r}: absolute target")
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(name), target))
        if resolved in (".", "") or resolved == ".." or resolved.startswith("../"):
            raise ArchiveError(
                f"refusing symbolic link {member.name!r} -> {target!r}: it points outside the destination"
            )
        parts = resolved.split("/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        for prefix in prefixes:
            if self.kinds.get(prefix) == "symlink":
                raise ArchiveError(
                    f"refusing symbolic link {member.name!r} -> {target!r}: it points through another link "
                    f"{prefix!r} (link chains are refused)"
                )
        if name in self.through:
            raise ArchiveError(
                f"refusing symbolic link {member.name!r}: another link in the archive points through it "
                f"(link chains are refused)"
            )
        self.through.update(prefixes)

    def _too_big(self, member: _Member) -> ArchiveError:
        return ArchiveError(
            f"refusing member {member.name!r}: the archive unpacks to more than {self.max_bytes} bytes (the limit)"
        )

    # ------------------------------------------------------------------ writing

    def _open_dir(self, parts: list[str], member: _Member, *, create: bool) -> int:
        """An fd of ``dest/parts``, each step opened without following links (created if asked).

        The last directory opened is kept: members come grouped by directory, and an open
        directory stays the same directory (nothing is ever removed or renamed here).
        """
        key = "/".join(parts)
        if self.last is not None and self.last[0] == key:
            return os.dup(self.last[1])
        fd = os.dup(self.root)
        try:
            for part in parts:
                if create:
                    try:
                        os.mkdir(part, 0o700, dir_fd=fd)
                    except FileExistsError:
                        pass
                try:
                    child = os.open(part, _O_DIR, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
                        raise ArchiveError(
                            f"refusing member {member.name!r}: {part!r} on its path is not a directory "
                            f"(a link or a file)"
                        ) from None
                    raise
                os.close(fd)
                fd = child
            if self.last is not None:
                os.close(self.last[1])
            self.last = (key, os.dup(fd))
            return fd
        except BaseException:
            os.close(fd)
            raise

    def _make_dirs(self, name: str, member: _Member) -> None:
        if name != ".":
            os.close(self._open_dir(name.split("/"), member, create=True))

    def _write_file(self, name: str, member: _Member, source: IO[bytes] | None) -> None:
        *parents, base = name.split("/")
        parent = self._open_dir(parents, member, create=True)
        try:
            try:
                fd = os.open(base, _O_NEW_FILE, 0o600, dir_fd=parent)
            except FileExistsError:
                raise ArchiveError(f"refusing member {member.name!r}: something of that name exists already") from None
            with os.fdopen(fd, "wb") as handle:
                while source is not None and (chunk := source.read(CHUNK)):
                    self.written += len(chunk)
                    if self.written > self.max_bytes:
                        raise self._too_big(member)
                    handle.write(chunk)
                os.fchmod(handle.fileno(), _file_mode(member.mode))
                if member.mtime is not None:
                    try:
                        os.utime(handle.fileno(), (member.mtime, member.mtime))
                    except (OSError, OverflowError, ValueError):
                        pass
        finally:
            os.close(parent)

    def _link(self, name: str, member: _Member) -> None:
        *parents, base = name.split("/")
        parent = self._open_dir(parents, member, create=True)
        try:
            os.symlink(member.target, base, dir_fd=parent)
        except FileExistsError:
            raise ArchiveError(f"refusing member {member.name!r}: something of that name exists already") from None
        finally:
            os.close(parent)

    def _hardlink(self, name: str, member: _Member) -> None:
        raw = member.target
        parts = [p for p in raw.replace("\\", "/").split("/") if p not in ("", ".")]
        target = "/".join(parts)
        if raw.startswith("/") or ".." in parts or self.kinds.get(target) != "file":
            raise ArchiveError(
                f"refusing hard link {member.name!r} -> {raw!r}: only links to a regular file extracted "
                f"earlier from the same archive are allowed"
            )
        *src_parents, src_base = parts
        *parents, base = name.split("/")
        src_dir = self._open_dir(src_parents, member, create=False)
        try:
            dst_dir = self._open_dir(parents, member, create=True)
            try:
                os.link(src_base, base, src_dir_fd=src_dir, dst_dir_fd=dst_dir, follow_symlinks=False)
            except FileExistsError:
                raise ArchiveError(f"refusing member {member.name!r}: something of that name exists already") from None
            finally:
                os.close(dst_dir)
        finally:
            os.close(src_dir)

    def finish(self) -> None:
        """Directory modes last (a read-only directory member must not block its content)."""
        for name, mode in reversed(self.dir_modes):
            parts = [] if name == "." else name.split("/")
            fd = self._open_dir(parts, _Member(name=name, kind="dir", mode=mode), create=False)
            try:
                os.fchmod(fd, mode)
            finally:
                os.close(fd)


def _file_mode(mode: int) -> int:
    """Permission bits only, no group/other write, always owner read/write."""
    return (mode & 0o755) | 0o600


def _dir_mode(mode: int) -> int:
    return (mode & 0o755) | 0o700


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__

