"""Tools cwltool has accepted before, remembered across runs by content digest.

Checking a ``cli`` with cwltool costs ~0.6 s per process (imports plus parsing the CWL schema),
more than the rest of a one-batch run. The verdict depends only on the tool and on the cwltool
and faice versions, so an accepted tool is recorded as an empty file named by the digest of
those; a tool is never remembered as bad (its problems are always reported afresh). The record
holds no content of the tool. Set ``FAICE_CACHE_DIR`` to move it, or to an empty string to
check every time; an unwritable cache only costs time.
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import cache
from pathlib import Path
from typing import Any


def cache_dir() -> Path | None:
    configured = os.environ.get("FAICE_CACHE_DIR")
    if configured is not None:
        return Path(configured) / "checked-tools" if configured else None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "faice" / "checked-tools"


@cache
def _versions() -> str:
    """faice's version and where cwltool and schema-salad are installed, with their mtimes:
    an upgrade of either changes it. (importlib.metadata would cost 20 ms of a 0.5 s run.)"""
    from importlib.util import find_spec

    from faice import __version__

    found = [f"faice={__version__}"]
    for module in ("cwltool", "schema_salad"):
        spec = find_spec(module)
        origin = spec.origin if spec and spec.origin else ""
        try:
            stamp = os.stat(origin).st_mtime_ns if origin else 0
        except OSError:
            stamp = 0
        found.append(f"{module}={origin}@{stamp}")
    return ";".join(found)


def _marker(cli: dict[str, Any]) -> Path | None:
    where = cache_dir()
    if where is None:
        return None
    text = json.dumps(cli, sort_keys=True, default=str) + "\n" + _versions()
    return where / hashlib.sha256(text.encode()).hexdigest()


def is_known_good(cli: dict[str, Any]) -> bool:
    marker = _marker(cli)
    return marker is not None and marker.is_file()


def remember_good(cli: dict[str, Any]) -> None:
    marker = _marker(cli)
    if marker is None:
        return
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
    except OSError:
        pass
