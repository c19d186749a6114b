"""Ids in the format of MongoDB ObjectIds (24 hex digits), so upstream clients accept them."""

from __future__ import annotations

import itertools
import os
import re
import threading
import time

_ID = re.compile(r"^[0-9a-f]{24}$")
_counter = itertools.count(int.from_bytes(os.urandom(3), "big"))
_lock = threading.Lock()
_process_part = os.urandom(5)


def new_id() -> str:
    """Seconds since the epoch, 5 random bytes per process and a counter: sortable and unique."""
    with _lock:
        count = next(_counter) & 0xFFFFFF
    return (int(time.time()).to_bytes(4, "big") + _process_part + count.to_bytes(3, "big")).hex()


def is_valid_id(text: str) -> bool:
    return bool(_ID.match(text or ""))
