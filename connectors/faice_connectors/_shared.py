"""Small pieces the built-in connectors share: schema blocks.

The files of an upload come from :func:`faice.connectors.trees.output_tree`, which never
follows a link out of the output.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


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
