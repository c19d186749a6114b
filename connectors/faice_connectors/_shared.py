"""Small pieces the built-in connectors share: schema blocks and the files of an upload."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from faice.connectors import Listing, listed_files


def strings_block(required: Sequence[str], optional: Sequence[str] = (), **others: Any) -> dict[str, Any]:
    """A JSON Schema for a closed mapping of string values (a credentials block such as
    ``auth``); ``others`` are extra keys with their own schemas."""
    properties = {name: {"type": "string"} for name in (*required, *optional)}
    return {
        "type": "object",
        "properties": {**properties, **others},
        "required": list(required),
        "additionalProperties": False,
    }


def files_to_send(src: Path, listing: Listing | None) -> list[str]:
    """The relative paths of a directory output to upload: its listing's, else every file."""
    if listing is not None:
        return [rel for rel, _item in listed_files(listing)]
    return sorted(p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file())
