"""Private scratch directories for connector secrets that a killed faice cannot leak.

A connector that must hand a secret to another program (a private key for sshfs, an
askpass helper) writes it into ``$TMPDIR/<prefix>XXXX`` (0700) holding an ``owner`` file
that names the faice process. The directory is removed when the connector is done; after a
SIGKILL, :func:`remove_dead_scratch` (run at every start) removes the directories whose
owner is gone, so no password or key outlives the run that needed it.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from faice.runtime.docker import owner_alive, owner_token

PREFIXES = ("faice-ssh-", "faice-sshfs-")
OWNER_FILE = "owner"
UNOWNED_GRACE_S = 60.0  # a dir without an owner file is being created, or is an older faice's


def private_dir(prefix: str) -> Path:
    """A fresh 0700 directory with this process recorded as its owner."""
    if prefix not in PREFIXES:
        raise ValueError(f"unknown scratch prefix {prefix!r}")
    path = Path(tempfile.mkdtemp(prefix=prefix))
    (path / OWNER_FILE).write_text(owner_token(), encoding="ascii")
    return path


def remove_dead_scratch(root: Path | None = None) -> list[Path]:
    """Remove scratch dirs of dead owners (and old ones without an owner); return them."""
    root = Path(root or tempfile.gettempdir())
    removed: list[Path] = []
    now = time.time()
    for prefix in PREFIXES:
        for path in root.glob(f"{prefix}*"):
            if path.is_symlink() or not path.is_dir():
                continue
            try:
                token = (path / OWNER_FILE).read_text(encoding="ascii").strip()
            except OSError:
                token = ""
            try:
                age = now - path.stat().st_mtime
            except OSError:
                continue
            if (token and owner_alive(token)) or (not token and age < UNOWNED_GRACE_S):
                continue
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed
