"""A running container's stdout/stderr written to ``batches/<id>/`` as they come, masked.

``faice logs -f`` and the ``stdout`` metrics source read these files while the batch runs,
so they must grow as the program prints, not appear at the end. Secrets are masked on the
way to disk by :class:`faice.secrets.StreamRedactor` (a secret split across chunks is still
caught; memory stays one chunk plus the longest secret). The last complete line is kept for
the live display.

Docker may end a followed log stream a moment before its last bytes (the container exited,
the log copier had not flushed yet), so once the container has exited the stream is read
again from the start and whatever the first pass missed is appended (:meth:`LogStream.finish`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from faice.secrets import Redactor, StreamRedactor

LAST_LINE_CHARS = 200


class LogStream:
    """One thread copying one stream of a container into a file until the stream ends."""

    def __init__(self, open_chunks: Callable[[], Iterable[bytes]], target: Path, redactor: Redactor | None):
        self.target = target
        self.error: BaseException | None = None
        self.last_line = ""
        self._partial = b""
        self._received = 0  # raw bytes written so far
        self._exited = threading.Event()
        self._open = open_chunks
        self._file = open(target, "wb")  # noqa: SIM115 - closed by the thread
        self._stream = StreamRedactor(redactor, self._sink)
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
            for chunk in self._open():
                self._received += len(chunk)
                self._stream.write(chunk)
            # The followed stream ended: the container exited (or Docker dropped us). Once the
            # batch confirms the exit, the complete log tells what the first pass missed.
            if self._exited.wait(30):
                skip = self._received
                for chunk in self._open():
                    if skip >= len(chunk):
                        skip -= len(chunk)
                        continue
                    self._stream.write(chunk[skip:])
                    skip = 0
        except BaseException as exc:
            self.error = exc
        finally:
            try:
                self._stream.close()
            finally:
                self._file.close()

    def finish(self, timeout: float) -> bool:
        """The container has exited: complete the file. True when the whole log was written."""
        self._exited.set()
        return self.join(timeout)

    def join(self, timeout: float) -> bool:
        """True when the whole stream was written (it ended and nothing failed)."""
        self._thread.join(timeout)
        return not self._thread.is_alive() and self.error is None
