"""A running container's stdout/stderr written to ``batches/<id>/`` as they come, masked.

``faice logs -f`` and the ``stdout`` metrics source read these files while the batch runs,
so they must grow as the program prints, not appear at the end. Secrets are masked on the
way to disk by :class:`faice.secrets.StreamRedactor` (a secret split across chunks is still
caught; memory stays one chunk plus the longest secret). The last complete line is kept for
the live display.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from pathlib import Path

from faice.secrets import Redactor, StreamRedactor

LAST_LINE_CHARS = 200


class LogStream:
    """One thread copying one stream of a container into a file until the stream ends."""

    def __init__(self, chunks: Iterable[bytes], target: Path, redactor: Redactor | None):
        self.target = target
        self.error: BaseException | None = None
        self.last_line = ""
        self._partial = b""
        self._file = open(target, "wb")  # noqa: SIM115 - closed by the thread
        self._stream = StreamRedactor(redactor, self._sink)
        self._chunks = chunks
        self._thread = threading.Thread(target=self._copy, name=f"faice-log-{target.name}", daemon=True)
        self._thread.start()

    def _sink(self, masked: bytes) -> None:
        self._file.write(masked)
        self._file.flush()  # readers (faice logs -f, metrics) see it now
        data = (self._partial + masked)[-4 * LAST_LINE_CHARS:]
        lines = data.split(b"\n")
        self._partial = lines.pop()
        complete = [line for line in lines if line.strip()]
        if complete:
            self.last_line = complete[-1].decode("utf-8", "replace")[-LAST_LINE_CHARS:]

    def _copy(self) -> None:
        try:
            for chunk in self._chunks:
                self._stream.write(chunk)
        except BaseException as exc:
            self.error = exc
        finally:
            try:
                self._stream.close()
            finally:
                self._file.close()

    def join(self, timeout: float) -> bool:
        """True when the whole stream was written (it ended and nothing failed)."""
        self._thread.join(timeout)
        return not self._thread.is_alive() and self.error is None
