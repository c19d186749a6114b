"""Faice's temp directories (mount points, staging cache, secrets for helper programs) that a
killed faice cannot leak.

Every directory faice creates in ``$TMPDIR`` starts with one of :data:`PREFIXES` and holds an
``owner`` file naming the faice process (:func:`owned_tempdir`). At every start, the dirs
whose owner is gone are unmounted and removed (:func:`remove_stale_tempdirs`); a run's dir
also names its run directory, so the run that died can be recorded as ``interrupted``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from faice.descriptors import mount_points_below, open_private_dir, read_small_at, remove_entry, remove_tree
from faice.runtime.docker import owner_alive, owner_token

PREFIX = "faice-run-"
# Every $TMPDIR prefix faice uses: run scratch, `faice validate`'s checks, the ssh connector's
# key/password files (its own module creates those, with the same owner file), an external
# connector's access file where there is no memfd.
PREFIXES = (PREFIX, "faice-check-", "faice-ssh-", "faice-sshfs-", "faice-connector-")
OWNER_FILE = "owner"
OUTDIR_FILE = "outdir"  # the run directory of a faice-run-* dir


def owned_tempdir(prefix: str, *, outdir: Path | None = None) -> Path:
    """A fresh 0700 temp dir recording this process as its owner (and the run directory)."""
    if not prefix.startswith(PREFIXES):
        raise ValueError(f"{prefix!r}: not one of faice's temp dir prefixes {PREFIXES}")
    path = Path(tempfile.mkdtemp(prefix=prefix))  # 0700: only its owner's start-up cleanup removes it
    (path / OWNER_FILE).write_text(owner_token(), encoding="ascii")
    if outdir is not None:
        (path / OUTDIR_FILE).write_text(str(Path(outdir).absolute()), encoding="utf-8")
    return path


def create_run_tempdir(run_id: str, *, outdir: Path | None = None) -> Path:
    return owned_tempdir(f"{PREFIX}{run_id}-", outdir=outdir)


def unmount_all(path: Path) -> None:
    for target in mount_points_below(path):
        for command in (["fusermount3", "-u", "-z", target], ["fusermount", "-u", "-z", target], ["umount", "-l", target]):
            if shutil.which(command[0]):
                done = subprocess.run(command, capture_output=True, timeout=30)
                if done.returncode == 0:
                    break


def remove_run_tempdir(path: Path) -> None:
    unmount_all(path)
    remove_tree(path)


def remove_stale_tempdirs(root: Path | None = None,
                          on_dead_run: Callable[[Path, str], object] | None = None,
                          *, prefixes: tuple[str, ...] = PREFIXES,
                          unowned_after: float | None = None) -> list[Path]:
    """Remove every faice temp dir of this user whose owner process is gone;
    ``on_dead_run(outdir, owner)`` is told about each run directory such a dir names, before
    the dir goes. A dir without an owner file is being created (or is an older faice's):
    removed only when ``unowned_after`` seconds old.

    ``$TMPDIR`` is shared: another user can plant names there. Only directories this user
    owns and nobody else may enter count (whatever their owner file says); they are read and
    emptied through descriptors, so a name swapped for a link meanwhile leads nowhere."""
    removed = []
    base = Path(root or tempfile.gettempdir())
    try:
        base_fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return []
    try:
        with os.scandir(base_fd) as found:
            names = sorted(entry.name for entry in found if entry.name.startswith(prefixes))
        for name in names:
            fd = open_private_dir(base_fd, name)
            if fd is None:
                continue  # another user's, a link or a file: not faice's to judge
            try:
                if not _stale(fd, unowned_after):
                    continue
                path = base / name
                token = _small_text(fd, OWNER_FILE)
                outdir = _small_text(fd, OUTDIR_FILE) if on_dead_run is not None else ""
                if outdir and on_dead_run is not None:
                    try:
                        on_dead_run(Path(outdir), token)
                    except Exception:
                        pass  # a run directory that is gone or unreadable: the cleanup goes on
                unmount_all(path)
                remove_entry(base_fd, name, path, directory_fd=fd)
                removed.append(path)
            finally:
                os.close(fd)
    finally:
        os.close(base_fd)
    return removed


def _stale(dir_fd: int, unowned_after: float | None) -> bool:
    token = _small_text(dir_fd, OWNER_FILE)
    if token:
        return not owner_alive(token)
    return unowned_after is not None and time.time() - os.fstat(dir_fd).st_mtime >= unowned_after


def _small_text(dir_fd: int, name: str) -> str:
    """The text of a small regular file in the directory (never a link); "" when there is none."""
    data = read_small_at(dir_fd, name)
    return data.decode("utf-8", "replace").strip() if data else ""
