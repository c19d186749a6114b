"""What an output really holds: walked without following links out of it (public API).

A batch's outputs are written by its container, which may be hostile: it can leave
``results/leak -> /root/.ssh/id_ed25519`` behind, and a connector that simply opens
``results/leak`` would upload a host file. Every connector — built-in or a plugin — gets the
files of an output from here instead:

* :func:`output_tree` walks a directory output without following links. A link whose target
  (fully resolved) stays strictly inside the output directory is sent as a copy of what it
  points to (a file's content, a directory's files under the link's name); a link that leaves
  it raises :class:`OutputLinkError` naming the link and its target. Links back to a directory
  that contains them (loops) are refused; dangling links inside the tree, FIFOs, sockets and
  devices have no content and are skipped.
* :func:`output_file` checks a single File output: if it is (or lies under) a link, its
  resolved target must stay inside ``root``; it must be a regular file.

Each :class:`TreeFile` carries the *resolved* host path to read, made of real directories
only, so a connector that opens it never passes through a link.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from faice.connectors.api import ConnectorFailure, Listing, listed_dirs, listed_files, safe_relative

DEFAULT_MAX_ENTRIES = 1_000_000


class OutputLinkError(ConnectorFailure):
    """An output (or an entry in it) is a symbolic link that leaves the output."""


@dataclass(frozen=True)
class TreeFile:
    """One file to send: ``rel`` is its name in the destination, ``path`` the host file to read."""

    rel: str
    path: Path
    size: int


@dataclass
class OutputTree:
    """A directory output as it will be sent: directories (parents first) and files."""

    root: Path
    dirs: list[str] = field(default_factory=list)
    files: list[TreeFile] = field(default_factory=list)

    @property
    def size(self) -> int:
        return sum(item.size for item in self.files)


def _inside(path: str, root: str) -> bool:
    return path.startswith(root.rstrip(os.sep) + os.sep)


def output_file(src: Path | str, root: Path | str | None = None) -> Path:
    """The host file to read for a File output ``src``, refusing a link out of ``root``.

    ``root`` is the directory the output must stay in (faice passes the batch's
    ``/cc/outputs``); by default the directory that holds ``src``. Returns the resolved path.
    """
    src = Path(src)
    root = Path(root) if root is not None else src.parent
    real_root = os.path.realpath(root)
    real = os.path.realpath(src)
    if not _inside(real, real_root):
        shown = os.readlink(src) if src.is_symlink() else real
        raise OutputLinkError(
            f"refusing output file {src.name!r}: it is a symbolic link to {shown!r}, outside the "
            f"output directory {str(root)!r}"
        )
    try:
        mode = os.stat(real).st_mode
    except OSError:
        raise ConnectorFailure(f"output file {src.name!r} does not exist") from None
    if not stat.S_ISREG(mode):
        raise ConnectorFailure(f"output {src.name!r} is not a regular file")
    return Path(real)


def output_tree(
    src: Path | str,
    listing: Listing | None = None,
    *,
    root: Path | str | None = None,
    max_entries: int = DEFAULT_MAX_ENTRIES,
) -> OutputTree:
    """The directories and files of the directory output ``src`` (every file, or the listed ones).

    ``root``: where ``src`` itself must stay (when ``src`` is a link); by default ``src``.
    Raises :class:`OutputLinkError` for a link that leaves ``src``, :class:`ConnectorFailure`
    for a listed file that is missing or a tree of more than ``max_entries`` entries.
    """
    src = Path(src)
    real_src = os.path.realpath(src)
    if root is not None and not (real_src == os.path.realpath(root) or _inside(real_src, os.path.realpath(root))):
        raise OutputLinkError(
            f"refusing output directory {src.name!r}: it is a symbolic link to {os.readlink(src)!r}, outside "
            f"the output directory {str(root)!r}"
        )
    if not os.path.isdir(real_src):
        raise ConnectorFailure(f"output directory {src.name!r} does not exist")
    tree = OutputTree(root=src)
    if listing is not None:
        _listed(tree, real_src, listing)
    else:
        _Walk(tree, real_src, max_entries).directory(real_src, "", (real_src,))
    return tree


def _listed(tree: OutputTree, real_src: str, listing: Listing) -> None:
    for rel in listed_dirs(listing):
        rel = safe_relative(rel)
        real = os.path.realpath(os.path.join(real_src, rel))
        if os.path.lexists(os.path.join(real_src, rel)) and not _inside(real, real_src):
            raise _escape(rel, real_src)
        tree.dirs.append(rel)
    for rel, _item in listed_files(listing):
        rel = safe_relative(rel)
        path = os.path.join(real_src, rel)
        real = os.path.realpath(path)
        if not _inside(real, real_src):
            raise _escape(rel, real_src)
        try:
            info = os.stat(real)
        except OSError:
            raise ConnectorFailure(f"listed file {rel!r} does not exist in the output directory") from None
        if not stat.S_ISREG(info.st_mode):
            raise ConnectorFailure(f"listed file {rel!r} is not a regular file")
        tree.files.append(TreeFile(rel, Path(real), info.st_size))


def _escape(rel: str, real_src: str) -> OutputLinkError:
    """The error for the listed ``rel``, naming the link on its way that leaves the output."""
    parts = rel.split("/")
    for i in range(1, len(parts) + 1):
        probe = os.path.join(real_src, *parts[:i])
        if os.path.islink(probe) and not _inside(os.path.realpath(probe), real_src):
            rel, target = "/".join(parts[:i]), os.readlink(probe)
            break
    else:
        target = os.path.realpath(os.path.join(real_src, rel))
    return OutputLinkError(
        f"refusing symbolic link {rel!r} -> {target!r}: it leaves the output directory; "
        f"faice never sends files from outside an output"
    )


class _Walk:
    """A depth-first walk that never follows a link without checking where it lands."""

    def __init__(self, tree: OutputTree, real_src: str, max_entries: int) -> None:
        self.tree = tree
        self.real_src = real_src
        self.max_entries = max_entries
        self.count = 0

    def _count(self) -> None:
        self.count += 1
        if self.count > self.max_entries:
            raise ConnectorFailure(
                f"the output directory has more than {self.max_entries} entries (links inside it count once "
                f"per path)"
            )

    def directory(self, real_dir: str, prefix: str, ancestors: tuple[str, ...]) -> None:
        try:
            entries = sorted(os.scandir(real_dir), key=lambda e: e.name)
        except OSError as exc:
            raise ConnectorFailure(f"cannot read output directory {prefix or '.'!r}: {exc.strerror}") from None
        for entry in entries:
            rel = prefix + entry.name
            self._count()
            if entry.is_symlink():
                self.link(entry, rel, ancestors)
            elif entry.is_dir(follow_symlinks=False):
                self.tree.dirs.append(rel)
                self.directory(entry.path, rel + "/", (*ancestors, entry.path))
            elif entry.is_file(follow_symlinks=False):
                self.tree.files.append(TreeFile(rel, Path(entry.path), entry.stat(follow_symlinks=False).st_size))
            # FIFOs, sockets, devices: nothing to send (and a FIFO would block the upload)

    def link(self, entry: os.DirEntry, rel: str, ancestors: tuple[str, ...]) -> None:
        target = os.readlink(entry.path)
        real = os.path.realpath(entry.path)
        if not _inside(real, self.real_src):
            if real == self.real_src:
                raise OutputLinkError(f"refusing symbolic link {rel!r} -> {target!r}: it loops back to the output directory")
            raise OutputLinkError(
                f"refusing symbolic link {rel!r} -> {target!r}: it leaves the output directory; "
                f"faice never sends files from outside an output"
            )
        try:
            info = os.stat(real)
        except OSError:
            return  # dangling inside the tree: nothing to send
        if stat.S_ISDIR(info.st_mode):
            if any(real == a or _inside(a, real) for a in ancestors):
                raise OutputLinkError(f"refusing symbolic link {rel!r} -> {target!r}: it loops back to a directory that holds it")
            self.tree.dirs.append(rel)
            self.directory(real, rel + "/", (*ancestors, real))
        elif stat.S_ISREG(info.st_mode):
            self.tree.files.append(TreeFile(rel, Path(real), info.st_size))
