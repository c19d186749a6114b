"""File helpers every layer shares: atomic writes, tolerant reads, bounded tails.

A reader on another node (Slurm) or in another thread (``faice status`` while a run goes on)
must never see half a file, so every record is written to a temp file and renamed into place.
"""

from __future__ import annotations

import errno
import json
import math
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from faice.descriptors import open_beneath

# The most of a stream read back into memory (the agency keeps only its cap of this tail).
LOG_READ_LIMIT = 64 * 2**20
# The most of a JSON record read (run.json of a sweep of 10,000 batches holds a few MiB): a
# larger file is no record faice wrote, and parsing it would take gigabytes.
JSON_READ_LIMIT = 256 * 2**20


def atomic_write_text(
    path: Path, text: str, *, mode: int = 0o644, redact: Callable[[str], str] | None = None
) -> None:
    """Write ``text`` (passed through ``redact`` first) so readers see the old or the new file."""
    atomic_write_bytes(path, (redact(text) if redact is not None else text).encode("utf-8"), mode=mode)


def atomic_write_bytes(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Write ``data`` so readers see the old or the new file; a link at ``path`` is replaced,
    never followed (a run directory someone else wrote cannot aim a write elsewhere)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


# How a non-finite float is written: JSON (RFC 8259) has no NaN or infinity, and Python's
# ``Infinity``/``NaN`` tokens are rejected by jq, browsers and most other readers.
NON_FINITE = {math.inf: "Infinity", -math.inf: "-Infinity"}
NAN_TEXT = "NaN"


def standard_json(data: Any) -> Any:
    """``data`` with every non-finite float replaced by the string ``"Infinity"``,
    ``"-Infinity"`` or ``"NaN"`` (a sweep value ``.inf`` stays recognisable; metrics turn
    theirs into ``null`` before)."""
    if isinstance(data, float) and not math.isfinite(data):
        return NAN_TEXT if math.isnan(data) else NON_FINITE[data]
    if isinstance(data, dict):
        return {key: standard_json(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [standard_json(value) for value in data]
    return data


def dumps_json(data: Any, **options: Any) -> str:
    """``json.dumps`` that always writes standard JSON (see :func:`standard_json`)."""
    return json.dumps(standard_json(data), allow_nan=False, **options)


def atomic_write_json(
    path: Path, data: Any, *, mode: int = 0o644, redact: Callable[[str], str] | None = None
) -> None:
    """Write ``data`` as standard JSON; ``redact`` masks every string value (never a key, never
    the JSON text: a masked key or a mask across JSON syntax would break the record's shape)."""
    if redact is not None:
        data = _map_strings(data, redact)
    atomic_write_text(path, dumps_json(data, indent=2) + "\n", mode=mode)


def save_png(figure: Any, path: Path) -> None:
    """A matplotlib figure as a PNG at ``path``, written as :func:`atomic_write_bytes` does."""
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())


def _map_strings(data: Any, change: Callable[[str], str]) -> Any:
    if isinstance(data, str):
        return change(data)
    if isinstance(data, dict):
        return {key: _map_strings(value, change) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [_map_strings(value, change) for value in data]
    return data


def open_regular(path: Path, *, beneath: Path | None = None) -> BinaryIO:
    """``path`` opened for reading when it is a regular file; OSError for a FIFO, device or
    socket (which would block or never end). With ``beneath``, a directory ``path`` lies in,
    ``path`` is opened beneath it: a link leading out of it is refused
    (:class:`~faice.descriptors.OutsideError`), as in a run directory someone else wrote."""
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags) if beneath is None else open_beneath(beneath, os.path.relpath(path, beneath), flags)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_json(path: Path, *, beneath: Path | None = None, limit: int = JSON_READ_LIMIT) -> Any | None:
    """The parsed file, or None when it is missing or not JSON (a record being replaced), no
    regular file, larger than ``limit`` bytes or nested too deeply; ``beneath``: see
    :func:`open_regular`."""
    try:
        with open_regular(path, beneath=beneath) as handle:
            data = handle.read(limit + 1)
        return json.loads(data) if len(data) <= limit else None
    except (OSError, ValueError, RecursionError):
        return None


def read_tail(path: Path, limit: int | None = None, *, beneath: Path | None = None) -> tuple[str, int]:
    """(text, bytes skipped): the last ``limit`` bytes of a stream file, in whole lines
    (OSError when it is no regular file; ``beneath``: see :func:`open_regular`).

    A cut tail starts after its first newline, so that a secret cut in half at the start
    (which a redactor would no longer recognise) is dropped with the rest.
    """
    limit = LOG_READ_LIMIT if limit is None else limit
    with open_regular(path, beneath=beneath) as handle:
        size = handle.seek(0, 2)
        skipped = max(0, size - limit)
        handle.seek(skipped)
        data = handle.read()
    if skipped:
        newline = data.find(b"\n")
        cut = newline + 1 if newline >= 0 else len(data)
        skipped, data = skipped + cut, data[cut:]
    return data.decode("utf-8", "replace"), skipped


def tail_text(path: Path, limit: int = 4000, *, beneath: Path | None = None) -> str:
    """The last ``limit`` bytes of a text file in whole lines; empty when there is none."""
    try:
        return read_tail(path, limit, beneath=beneath)[0]
    except OSError:
        return ""


def make_read_only(path: Path) -> None:
    """Files 0444, directories 0555: a shared input cannot be changed by one batch."""
    if path.is_symlink():
        return
    if path.is_dir():
        for child in path.iterdir():
            make_read_only(child)
        path.chmod(0o555)
    elif path.exists():
        path.chmod(stat.S_IMODE(path.stat().st_mode) & 0o555 | 0o444)
