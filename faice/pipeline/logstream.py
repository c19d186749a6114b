"""A running container's stdout/stderr written to ``batches/<id>/`` as they come, masked.

``faice logs -f`` and the ``stdout`` metrics source read these files while the batch runs,
so they must grow as the program prints, not appear at the end. The output comes from one
attach to the container made before it started (as ``docker run`` does): every byte, both
streams on one connection, ending when the command's output ends. Secrets are masked on
the way to disk by :class:`faice.secrets.StreamRedactor` (a secret split across chunks is
still caught; memory stays one chunk plus the longest secret). The last complete line of
each stream is kept for the live display.

When the attached stream breaks, :meth:`OutputCopy.finish` says so and the batch fetches
the whole log once more after the exit.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from contextlib import ExitStack
from pathlib import Path

from faice.secrets import Redactor, StreamRedactor

LAST_LINE_CHARS = 200


class _StreamFile:
    """One stream's file and its last complete line."""

    def __init__(self, target: Path, redactor: Redactor | None, stack: ExitStack):
        self.last_line = ""
        self._partial = b""
        self._file = stack.enter_context(open(target, "wb"))  # noqa: SIM115 - closed with the stack
        self.masked = StreamRedactor(redactor, self._sink)
        stack.callback(self.masked.close)  # runs before the file closes (LIFO)

    def _sink(self, masked: bytes) -> None:
        self._file.write(masked)
        self._file.flush()  # readers (faice logs -f, metrics) see it now
        data = (self._partial + masked)[-4 * LAST_LINE_CHARS:]
        lines = data.split(b"\n")
        self._partial = lines.pop()
        complete = [line for line in lines if line.strip()]
        if complete:
            self.last_line = complete[-1].decode("utf-8", "replace")[-LAST_LINE_CHARS:]


class OutputCopy:
    """One thread copying a container's ``(stream, chunk)`` output into one file per stream."""

    def __init__(self, chunks: Iterable[tuple[str, bytes]], targets: dict[str, Path], redactor: Redactor | None):
        self.error: BaseException | None = None
        self._stack = ExitStack()
        self._files = {name: _StreamFile(path, redactor, self._stack) for name, path in targets.items()}
        self._chunks = chunks
        self._thread = threading.Thread(target=self._copy, name=f"faice-output-{next(iter(targets.values())).parent.name}",
                                        daemon=True)
        self._thread.start()

    def last_line(self, stream: str) -> str:
        found = self._files.get(stream)
        return found.last_line if found else ""

    def _copy(self) -> None:
        try:
            with self._stack:
                for stream, chunk in self._chunks:
                    found = self._files.get(stream)
                    if found is not None:
                        found.masked.write(chunk)
        except BaseException as exc:
            self.error = exc

    def finish(self, timeout: float) -> bool:
        """The container has exited: True when the whole output was written (the stream ended
        and nothing failed) within ``timeout`` seconds."""
        self._thread.join(timeout)
        return not self._thread.is_alive() and self.error is None
