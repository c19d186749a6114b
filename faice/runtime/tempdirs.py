"""Per-run temp directories (mount points, staging cache) that a killed run cannot leak.

Each run's temp dir is ``$TMPDIR/faice-run-<run id>`` with an ``owner`` file naming the
faice process; at every start, dirs whose owner is gone are unmounted and removed.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from faice.runtime.docker import owner_alive, owner_token

PREFIX = "faice-run-"


def create_run_tempdir(run_id: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{run_id}-"))
    (path / "owner").write_text(owner_token(), encoding="ascii")
    return path


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


def remove_stale_tempdirs() -> list[Path]:
    from faice.connectors.scratch import remove_dead_scratch

    removed = remove_dead_scratch()  # connector secrets (faice-ssh-*, faice-sshfs-*) of dead runs
    for path in Path(tempfile.gettempdir()).glob(f"{PREFIX}*"):
        try:
            token = (path / "owner").read_text(encoding="ascii").strip()
        except OSError:
            continue
        if token and not owner_alive(token):
            remove_run_tempdir(path)
            removed.append(path)
    return removed
