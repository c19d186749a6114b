"""Small pieces the built-in connectors share: schema blocks.

The files of an upload come from :func:`faice.connectors.trees.output_tree`, which never
follows a link out of the output.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def strings_block(required: Sequence[str], optional: Sequence[str] = (), *, non_empty: bool = False,
                  **others: Any) -> dict[str, Any]:
    """A JSON Schema for a closed mapping of string values (a credentials block such as
    ``auth``); ``non_empty``: an empty value is refused (an empty key would make a library
    fall back to the host's own credentials); ``others`` are extra keys with their own schemas."""
    value: dict[str, Any] = {"type": "string", "minLength": 1} if non_empty else {"type": "string"}
    properties = {name: dict(value) for name in (*required, *optional)}
    return {
        "type": "object",
        "properties": {**properties, **others},
        "required": list(required),
        "additionalProperties": False,
    }
