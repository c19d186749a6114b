"""Ctrl-C and SIGTERM during a run: one place that routes them and restores the handlers.

Every engine stops its work on the first signal (the local engine gives containers a grace
period, the slurm engine cancels the array) and exits 130 or 143 like a killed shell command.
Handlers given here must only record the signal: the interrupted thread may hold any lock.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator

EXIT_SIGNAL: dict[int, int] = {signal.SIGINT: 130, signal.SIGTERM: 143}


@contextlib.contextmanager
def interrupts_to(on_signal: Callable[[int, object], None]) -> Iterator[None]:
    """Send SIGINT and SIGTERM to ``on_signal`` while the block runs. Signal handlers exist
    only in the main thread; elsewhere (an agency worker) the block runs unchanged."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, on_signal) for signum in EXIT_SIGNAL}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
