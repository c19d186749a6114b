"""Notification hooks: POST ``{"batches": [{"batchId", "state"}]}`` when batches become final.

Upstream marks batches as notified, then posts once, best effort, up to 60 s late. Here a
:class:`Notifier` thread posts soon after the change (one message per experiment once all
its batches are final, or after :data:`NOTIFY_HOLD_SECONDS`), marks the batches as sent only
when every hook answered 2xx, and retries the others with exponential backoff capped at
:data:`MAX_DELAY` seconds. Stopping never waits for a hook: what was not delivered stays
unmarked in the database and is sent after the next start.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("faice.agency")

# Hold a finished batch's notification while its experiment still runs (one message per
# experiment, like upstream's per-round batching), but never longer than this.
NOTIFY_HOLD_SECONDS = 30.0
FIRST_DELAY = 1.0  # seconds before the first retry; doubled after each failure ...
MAX_DELAY = 300.0  # ... up to this
TIMEOUT = (5.0, 10.0)  # connect, read: a hook that hangs only delays the next messages


@dataclass
class Hook:
    url: str
    username: str | None = None
    password: str | None = None


def post_once(hook: Hook, body: dict[str, Any]) -> str | None:
    """POST ``body`` to ``hook``: None when it answered 2xx, else what went wrong."""
    import requests

    auth = (hook.username, hook.password or "") if hook.username else None
    try:
        response = requests.post(hook.url, json=body, auth=auth, timeout=TIMEOUT, allow_redirects=False)
    except requests.RequestException as exc:
        return str(exc)
    return None if 200 <= response.status_code < 300 else f"HTTP {response.status_code}"


@dataclass
class _Message:
    batches: list[dict[str, Any]]
    accepted: set[int] = field(default_factory=set)  # indexes of the hooks that took it
    due: float = 0.0
    delay: float = FIRST_DELAY
    failures: int = 0

    @property
    def ids(self) -> list[str]:
        return [b["_id"] for b in self.batches]


class Notifier:
    """Finds final, unnotified batches (:meth:`poll`, called by the dispatcher each round) and
    delivers them from a daemon thread of its own, so neither the dispatcher nor a stop waits."""

    def __init__(self, store: Any, hooks: list[Hook], *, first_delay: float = FIRST_DELAY, max_delay: float = MAX_DELAY):
        self.store = store
        self.hooks = hooks
        self.first_delay = first_delay
        self.max_delay = max_delay
        self._lock = threading.Lock()
        self._queue: list[_Message] = []
        self._queued: set[str] = set()  # batch ids waiting or being posted
        self._sent: set[str] = set()  # marked by us; forgotten once the database agrees
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def poll(self) -> None:
        """Queue one message for the batches that are final, not yet notified and not queued."""
        if not self.hooks or self._stopping.is_set():
            return
        pending = self.store.unnotified_final()
        now = time.time()
        with self._lock:
            self._sent &= {b["_id"] for b in pending}
            fresh = [b for b in pending if b["_id"] not in self._queued and b["_id"] not in self._sent]
        ready = [b for b in fresh if self._ready(b, now)]
        if not ready:
            return
        with self._lock:
            self._queue.append(_Message(ready, due=now, delay=self.first_delay))
            self._queued.update(b["_id"] for b in ready)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="notify", daemon=True)
                self._thread.start()
        self._wake.set()

    def _ready(self, batch: dict[str, Any], now: float) -> bool:
        from faice.agency.store import FINAL_STATES

        finished = batch["history"][-1]["time"]
        states = self.store.experiment_batch_states(batch["experimentId"])
        return all(s in FINAL_STATES for s in states) or now - finished > NOTIFY_HOLD_SECONDS

    def stop(self) -> None:
        """Return at once: a post in progress is abandoned, undelivered batches stay unmarked."""
        self._stopping.set()
        self._wake.set()

    # ------------------------------------------------------------ the thread
    def _loop(self) -> None:
        while not self._stopping.is_set():
            with self._lock:
                now = time.time()
                due = [m for m in self._queue if m.due <= now]
            for message in due:
                if self._stopping.is_set():
                    return
                try:
                    self._deliver(message)
                except Exception:  # never let one message end the deliveries
                    log.exception("notification delivery failed")
                    message.due = time.time() + self.max_delay
            with self._lock:
                nxt = min((m.due for m in self._queue), default=None)
            self._wake.wait(timeout=None if nxt is None else max(0.0, nxt - time.time()))
            self._wake.clear()

    def _deliver(self, message: _Message) -> None:
        body = {"batches": [{"batchId": b["_id"], "state": b["state"]} for b in message.batches]}
        problems = []
        for index, hook in enumerate(self.hooks):
            if index in message.accepted:
                continue
            problem = post_once(hook, body)
            if problem is None:
                message.accepted.add(index)
            else:
                problems.append(f"{hook.url}: {problem}")
        if self._stopping.is_set():
            return  # the database may be closed already; unmarked batches are sent after a restart
        if problems:
            message.failures += 1
            message.due = time.time() + message.delay
            log.warning(
                "notification for %d batch(es) not delivered (attempt %d, next in %.0f s): %s",
                len(message.batches), message.failures, message.delay, "; ".join(problems),
            )
            message.delay = min(message.delay * 2, self.max_delay)
            return
        marked = True
        try:
            self.store.mark_notified(message.ids)
        except Exception:  # a database hiccup: the batches are sent again later, never lost
            log.exception("could not mark %d notified batch(es)", len(message.ids))
            marked = False
        with self._lock:
            self._queue.remove(message)
            self._queued.difference_update(message.ids)
            if marked:
                self._sent.update(message.ids)
