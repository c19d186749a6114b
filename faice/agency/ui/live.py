"""What changed in a run since a page last asked: a version number and the batches behind it.

A page polls with the version it has; the answer names only the batches that changed since,
so a tick of a 10,000-batch run costs what changed, not the run. The server computes the
difference once per change of the run (not once per page or per tick).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Any

HISTORY = 256  # versions remembered; a page further behind reloads
# A batch's own fields: a new best moves the rank of every batch below it, which a reload shows
_WATCHED = ("state", "objective", "seconds", "failure", "message")


class ChangeLog:
    """Versions of one run: each :meth:`update` that finds a changed batch makes a new one."""

    def __init__(self) -> None:
        self.version = 0
        self._marks: dict[str, tuple] = {}
        self._history: deque[tuple[int, frozenset[str]]] = deque(maxlen=HISTORY)

    def update(self, rows: Iterable[dict[str, Any]]) -> frozenset[str]:
        """Compare ``rows`` (flat result rows) with the last ones; the ids that changed."""
        marks = {str(row["batch"]): tuple(row.get(k) for k in _WATCHED) for row in rows}
        changed = frozenset(k for k, v in marks.items() if self._marks.get(k) != v)
        changed |= frozenset(k for k in self._marks if k not in marks)
        self._marks = marks
        if changed:
            self.version += 1
            self._history.append((self.version, changed))
        return changed

    def since(self, version: int) -> frozenset[str] | None:
        """The batches changed after ``version``; None when that is too old to know (reload)."""
        if version == self.version:
            return frozenset()
        if version > self.version or not self._history or self._history[0][0] > version + 1:
            return None
        found: set[str] = set()
        for number, ids in self._history:
            if number > version:
                found |= ids
        return frozenset(found)
