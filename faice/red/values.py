"""What a number is in a RED file: JSON's int (not bool) and finite numbers, said once."""

from __future__ import annotations

import math
from typing import Any


def is_int(value: Any) -> bool:
    """An integer, not a bool (YAML's true is an int to Python)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite int or float, not a bool: .nan and .inf are no bounds or step sizes."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
