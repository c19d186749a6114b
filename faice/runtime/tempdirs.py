"""Faice's temp directories (mount points, staging cache, secrets for helper programs) that a
killed faice cannot leak.

Every directory faice creates in ``$TMPDIR`` starts with one of :data:`PREFIXES` and holds an
``owner`` file naming the faice process (:func:`owned_tempdir`). At every start, the dirs
whose owner is gone are unmounted and removed (:func:`remove_stale_tempdirs`); a run's dir
also names its run directory, so the run that died can be recorded as ``interrupted``.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from faice.runtime.docker import owner_alive, owner_token

PREFIX = "faice-run-"
# Every $TMPDIR prefix faice uses: run scratch, `faice validate`'s checks, the ssh connector's
# key/password files (its own module creates those, with the same owner file).
PREFIXES = (PREFIX, "faice-check-", "faice-ssh-", "faice-sshfs-")
OWNER_FILE = "owner"
OUTDIR_FILE = "outdir"  # the run directory of a faice-run-* dir


def owned_tempdir(prefix: str, *, outdir: Path | None = None) -> Path:
    """A fresh 0700 temp dir recording this process as its owner (and the run directory)."""
    if not prefix.startswith(PREFIXES):
        raise ValueError(f"{prefix!r}: not one of faice's temp dir prefixes {PREFIXES}")
    path = Path(tempfile.mkdtemp(prefix=prefix))
    (path / OWNER_FILE).write_text(owner_token(), encoding="ascii")
    if outdir is not None:
        (path / OUTDIR_FILE).write_text(str(Path(outdir).absolute()), encoding="utf-8")
    return path


def create_run_tempdir(run_id: str, *, outdir: Path | None = None) -> Path:
    return owned_tempdir(f"{PREFIX}{run_id}-", outdir=outdir)


def mounts_below(path: Path) -> list[str]:
    """Mount points at or below ``path`` (deepest first), from /proc/self/mounts."""
    root = str(path).rstrip("/")
    found = []
    try:
        with open("/proc/self/mounts", encoding="utf-8") as handle:
            for line in handle:
                parts = line.split()
                if len(parts) > 1:
                    target = parts[1].replace("\\040", " ")
                    if target == root or target.startswith(root + "/"):
                        found.append(target)
    except OSError:
        return []
    return sorted(found, key=len, reverse=True)


def unmount_all(path: Path) -> None:
    for target in mounts_below(path):
        for command in (["fusermount3", "-u", "-z", target], ["fusermount", "-u", "-z", target], ["umount", "-l", target]):
            if shutil.which(command[0]):
                done = subprocess.run(command, capture_output=True, timeout=30)
                if done.returncode == 0:
                    break


def remove_run_tempdir(path: Path) -> None:
    from faice.connectors.staging import remove_tree

    unmount_all(path)
    remove_tree(path)


def remove_stale_tempdirs(root: Path | None = None,
                          on_dead_run: Callable[[Path, str], object] | None = None,
                          *, prefixes: tuple[str, ...] = PREFIXES,
                          unowned_after: float | None = None) -> list[Path]:
    """Remove every faice temp dir whose owner process is gone; ``on_dead_run(outdir, owner)``
    is told about each run directory such a dir names, before the dir goes. A dir without
    an owner file is being created (or is an older faice's): removed only when
    ``unowned_after`` seconds old."""
    removed = []
    base = Path(root or tempfile.gettempdir())
    now = time.time()
    for prefix in prefixes:
        for path in base.glob(f"{prefix}*"):
            if path.is_symlink() or not path.is_dir():
                continue
            try:
                token = (path / OWNER_FILE).read_text(encoding="ascii").strip()
            except OSError:
                token = ""
            if token and owner_alive(token):
                continue
            if not token:
                try:
                    young = unowned_after is None or now - path.stat().st_mtime < unowned_after
                except OSError:
                    continue
                if young:
                    continue
            if on_dead_run is not None:
                try:
                    outdir = (path / OUTDIR_FILE).read_text(encoding="utf-8").strip()
                except OSError:
                    outdir = ""
                if outdir:
                    try:
                        on_dead_run(Path(outdir), token)
                    except Exception:
                        pass  # a run directory that is gone or unreadable: the cleanup goes on
            remove_run_tempdir(path)
            removed.append(path)
    return removed
