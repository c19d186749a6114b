"""Private scratch directories for connector secrets that a killed faice cannot leak.

A connector that must hand a secret to another program (a private key for sshfs, an
askpass helper) writes it into ``$TMPDIR/<prefix>XXXX`` (0700) holding an ``owner`` file
that names the faice process. The directory is removed when the connector is done; after a
SIGKILL, :func:`remove_dead_scratch` (and every faice start) removes the directories whose
owner is gone, so no password or key outlives the run that needed it.
"""

from __future__ import annotations

from pathlib import Path

from faice.runtime.tempdirs import owned_tempdir, remove_stale_tempdirs

PREFIXES = ("faice-ssh-", "faice-sshfs-")
UNOWNED_GRACE_S = 60.0  # a dir without an owner file is being created, or is an older faice's


def private_dir(prefix: str) -> Path:
    """A fresh 0700 directory with this process recorded as its owner."""
    if prefix not in PREFIXES:
        raise ValueError(f"unknown scratch prefix {prefix!r}")
    return owned_tempdir(prefix)


def remove_dead_scratch(root: Path | None = None) -> list[Path]:
    """Remove scratch dirs of dead owners (and old ones without an owner); return them."""
    return remove_stale_tempdirs(root, prefixes=PREFIXES, unowned_after=UNOWNED_GRACE_S)
