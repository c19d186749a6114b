"""Connector calls that a cancelled run stops waiting for at once.

A connector blocked in a socket read (a server that accepts and never answers), a DNS lookup
or a TLS handshake cannot be interrupted from another thread, and a transfer notices the
cancel event only between two chunks (:meth:`Progress.advance`). So a call runs on a helper
thread while the caller waits for its result *or* the cancel event: at cancel the caller goes
on at once and the helper is abandoned. It is a daemon: it ends when its call returns (the
connector's own timeout), or with the process.

Each calling thread keeps one helper for all its calls, because a connector may keep state per
thread (the http connector's session and its pooled connections), which must not grow per call.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future, wait
from typing import TypeVar

from faice.connectors.api import TransferCancelled

T = TypeVar("T")

POLL_S = 0.1  # how often a waiting caller looks at the cancel event


class _Helper:
    """A daemon thread running the calls it is handed, one at a time; ``None`` ends it."""

    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._serve, name="faice-connector-call", daemon=True).start()

    def _serve(self) -> None:
        while (job := self.jobs.get()) is not None:
            action, future = job
            try:
                future.set_result(action())
            except BaseException as exc:  # handed to the caller, who re-raises it
                future.set_exception(exc)


class CancellableCalls:
    """Runs connector calls so that :meth:`run` returns (raising) as soon as ``cancel`` is set."""

    def __init__(self, cancel: threading.Event) -> None:
        self.cancel = cancel
        self._lock = threading.Lock()
        self._idle: dict[int, _Helper] = {}  # calling thread → its helper, between calls
        self._closed = False

    def run(self, action: Callable[[], T]) -> T:
        """``action()``'s result or exception; :class:`TransferCancelled` once cancel is set."""
        caller = threading.get_ident()
        with self._lock:
            helper = self._idle.pop(caller, None) or _Helper()
        future: Future[T] = Future()
        helper.jobs.put((action, future))
        while not wait([future], timeout=POLL_S).done:
            if self.cancel.is_set():
                helper.jobs.put(None)  # abandoned: it ends once the call returns
                raise TransferCancelled("cancelled (the run is stopping)")
        with self._lock:
            if self._closed:
                helper.jobs.put(None)
            else:
                self._idle[caller] = helper
        return future.result()

    def close(self) -> None:
        """End the idle helpers (a busy one ends after its call)."""
        with self._lock:
            self._closed = True
            idle, self._idle = list(self._idle.values()), {}
        for helper in idle:
            helper.jobs.put(None)
