"""What a running batch tells whoever watches it (a progress display, a server's log)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class BatchEvent:
    """A state or phase change of one batch (or, while it runs, news: a metric, a log line)."""

    batch_id: str
    index: int
    state: str  # pending, running, succeeded, failed, cancelled, skipped
    phase: str | None = None  # wait-gpu, stage-in, run, collect, stage-out
    message: str | None = None
    failure_class: str | None = None
    seconds: float | None = None
    time: float = field(default_factory=time.time)
    parameters: dict[str, Any] | None = None  # the batch's sweep values, for a display
    metric: dict[str, Any] | None = None  # the objective's latest {name, step, value} while it runs
    log: str | None = None  # the last line the command printed (redacted)


EventSink = Callable[[BatchEvent], None]


def ignore(_event: BatchEvent) -> None:
    """The sink of a batch nobody watches."""
