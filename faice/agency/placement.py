"""Where the agency server admits a batch: like ``faice exec`` on one host, for all users.

A registered batch starts only when all of these allow it: the server-wide cap (``--parallel``,
default the CPU count: one batch per CPU), its experiment's ``batchConcurrencyLimit`` (counting
its scheduled and processing batches, upstream's rule, default 64), the host RAM not yet
reserved by running batches (``container.settings.ram``) and, on a local runner, free GPUs from
the server's one allocator (whole devices, or packed by VRAM when the batch allows sharing).
The GPUs are reserved here, before the batch is scheduled, and handed to the runner, so a
batch never sits in ``processing`` waiting for a device.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from faice.errors import FaiceError
from faice.runtime.gpus import Gpu, GpuAllocator, GpuRequest

DEFAULT_BATCH_CONCURRENCY = 64  # CC-Agency's default batchConcurrencyLimit
RAM_SHARE = 0.9  # of the host's memory, as faice exec's default parallelism


@dataclass
class Claim:
    """What one admitted batch holds until it ends."""

    experiment_id: str
    ram: int = 0
    gpus: list[Gpu] = field(default_factory=list)
    owner: str = ""  # the user whose batch it is (fair turns between users)


def host_ram_mb() -> int | None:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20 * RAM_SHARE)
    except (ValueError, OSError):
        return None


def concurrency_limit(execution: dict[str, Any] | None) -> int:
    """``execution.settings.batchConcurrencyLimit`` of a stored experiment (default 64)."""
    value = ((execution or {}).get("settings") or {}).get("batchConcurrencyLimit")
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    return DEFAULT_BATCH_CONCURRENCY


class Impossible(Exception):
    """A batch this host could never run (more or bigger GPUs than it has): fail it, do not
    let it wait forever."""


class Admission:
    """The server's bookkeeping of what running batches hold (thread-safe)."""

    def __init__(self, cap: int, *, gpus: GpuAllocator | None = None, ram_mb: int | None = None):
        self.cap = max(1, cap)
        self.gpus = gpus
        self.ram_mb = ram_mb
        self._lock = threading.Lock()
        self._running: Counter[str] = Counter()
        self._owners: Counter[str] = Counter()
        self._ram = 0
        self._count = 0

    @property
    def full(self) -> bool:
        return self._count >= self.cap

    def running_of(self, owner: str) -> int:
        """How many admitted batches ``owner`` holds now."""
        with self._lock:
            return self._owners[owner]

    def admit(self, experiment_id: str, execution: dict[str, Any] | None,
              container_settings: dict[str, Any] | None, owner: str = "") -> Claim | None:
        """Reserve what the batch needs, or None when it must wait (the reason it waits is
        only ever temporary). Raises :class:`Impossible` for a request no placement on this
        host could ever satisfy."""
        settings = container_settings or {}
        ram: int = settings["ram"] if isinstance(settings.get("ram"), int) else 0
        try:
            request = GpuRequest.from_settings(settings.get("gpus"))
        except FaiceError:
            request = GpuRequest()  # reported by the batch itself when it runs
        with self._lock:
            if self._count >= self.cap:
                return None
            if self._running[experiment_id] >= concurrency_limit(execution):
                return None
            if ram and self.ram_mb is not None and self._count and self._ram + ram > self.ram_mb:
                return None  # the first batch always runs: a single batch above RAM fails in Docker
            gpus: list[Gpu] = []
            if request.count and self.gpus is not None and not self.gpus.possible(request):
                have = ", ".join(f"{g.index} ({g.vram} MiB)" for g in self.gpus.gpus) or "none"
                raise Impossible(f"container.settings.gpus: cannot be satisfied on this agency: "
                                 f"{request.describe()} requested, available: {have}")
            if request.count and self.gpus is not None:
                placed = self.gpus.try_acquire(request, fresh=False)
                if placed is None:
                    return None
                gpus = placed
            self._running[experiment_id] += 1
            self._owners[owner] += 1
            self._ram += ram
            self._count += 1
            return Claim(experiment_id, ram, gpus, owner)

    def release(self, claim: Claim) -> None:
        with self._lock:
            self._running[claim.experiment_id] -= 1
            if self._running[claim.experiment_id] <= 0:
                del self._running[claim.experiment_id]
            self._owners[claim.owner] -= 1
            if self._owners[claim.owner] <= 0:
                del self._owners[claim.owner]
            self._ram -= claim.ram
            self._count -= 1
        if claim.gpus and self.gpus is not None:
            self.gpus.release(claim.gpus)
