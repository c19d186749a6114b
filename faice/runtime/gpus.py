"""GPU inventory and exclusive allocation (docs/red-reference.md, "GPUs").

The inventory comes from NVML (``pynvml``) when importable, else from ``nvidia-smi``; it is
restricted by ``--gpu-ids`` and by an outer allocation (``CUDA_VISIBLE_DEVICES``, e.g. set by
Slurm). Every concurrent batch gets its own device ids: two batches never share a GPU.
Tests inject an inventory, because no GPU exists on the development machines.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from faice.errors import EngineError, UsageError


@dataclass(frozen=True)
class Gpu:
    """One device as the host reports it (``vram`` in MiB)."""

    index: str
    uuid: str
    vram: int
    name: str = ""


@dataclass(frozen=True)
class GpuRequest:
    """What one batch needs: one minimum VRAM (MiB, 0 = any) per device."""

    vram_min: tuple[int, ...] = ()

    @property
    def count(self) -> int:
        return len(self.vram_min)

    @classmethod
    def from_settings(cls, gpus: Mapping[str, Any] | None) -> GpuRequest:
        """``container.settings.gpus`` → request. ``vramMin`` is optional (upstream crashed)."""
        if not gpus:
            return cls()
        if gpus.get("devices") is not None:
            return cls(tuple(int((d or {}).get("vramMin") or 0) for d in gpus["devices"]))
        return cls((0,) * int(gpus.get("count") or 0))


def parse_id_list(text: str | None) -> list[str] | None:
    """``"0, 2"`` → ``["0", "2"]``; None/empty → None (no restriction)."""
    if text is None:
        return None
    ids = [part.strip() for part in str(text).split(",") if part.strip()]
    return ids or None


def detect_gpus() -> list[Gpu]:
    """All NVIDIA GPUs of this host; empty when there is no driver."""
    try:
        import pynvml  # type: ignore[import-not-found]
    except ImportError:
        return _detect_with_nvidia_smi()
    try:
        pynvml.nvmlInit()
    except Exception:
        return _detect_with_nvidia_smi()
    try:
        found = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            uuid = pynvml.nvmlDeviceGetUUID(handle)
            name = pynvml.nvmlDeviceGetName(handle)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            found.append(Gpu(str(index), _text(uuid), int(memory.total) // 2**20, _text(name)))
        return found
    finally:
        pynvml.nvmlShutdown()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _detect_with_nvidia_smi() -> list[Gpu]:
    if shutil.which("nvidia-smi") is None:
        return []
    query = ["nvidia-smi", "--query-gpu=index,uuid,memory.total,name", "--format=csv,noheader,nounits"]
    try:
        done = subprocess.run(query, capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        raise EngineError(f"could not list GPUs with nvidia-smi: {exc}") from None
    return parse_nvidia_smi(done.stdout)


def parse_nvidia_smi(text: str) -> list[Gpu]:
    found = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 3 and parts[0].isdigit():
            found.append(Gpu(parts[0], parts[1], int(float(parts[2])), ", ".join(parts[3:])))
    return found


def restrict(
    gpus: Iterable[Gpu], *, gpu_ids: list[str] | None = None, visible: str | None = None
) -> list[Gpu]:
    """Keep the devices allowed by ``--gpu-ids`` and by ``CUDA_VISIBLE_DEVICES`` (indices or
    UUIDs). An id that names no device is a usage error, not a silent no-op."""
    available = list(gpus)
    for ids, what in ((parse_id_list(visible), "CUDA_VISIBLE_DEVICES"), (gpu_ids, "--gpu-ids")):
        if ids is None:
            continue
        known = {g.index: g for g in available} | {g.uuid: g for g in available}
        unknown = [i for i in ids if i not in known]
        if unknown and what == "--gpu-ids":
            have = ", ".join(g.index for g in available) or "none"
            raise UsageError(f"--gpu-ids: no GPU {', '.join(unknown)} on this host (available: {have})")
        chosen = {known[i].uuid for i in ids if i in known}
        available = [g for g in available if g.uuid in chosen]
    return available


class GpuAllocator:
    """Hands out exclusive device ids to concurrent batches; blocks while none fit."""

    def __init__(self, gpus: Iterable[Gpu]):
        self.gpus = list(gpus)
        self._free = {g.uuid for g in self.gpus}
        self._cond = threading.Condition()

    def check(self, request: GpuRequest) -> None:
        """Fail before anything runs when no placement could ever satisfy ``request``."""
        if request.count and self._place(request, {g.uuid for g in self.gpus}) is None:
            have = ", ".join(f"{g.index} ({g.vram} MiB)" for g in self.gpus) or "none"
            wants = ", ".join(f"≥{v} MiB" if v else "any" for v in request.vram_min)
            raise EngineError(
                f"container.settings.gpus: cannot be satisfied: {request.count} GPU(s) requested "
                f"({wants}), available: {have}"
            )

    def max_concurrent(self, request: GpuRequest) -> int | None:
        """How many batches fit at once (None = GPUs do not limit)."""
        if not request.count:
            return None
        free, n = {g.uuid for g in self.gpus}, 0
        while (placed := self._place(request, free)) is not None:
            free -= {g.uuid for g in placed}
            n += 1
        return n

    def _place(self, request: GpuRequest, free: set[str]) -> list[Gpu] | None:
        # Largest demands first, each on the smallest free device that fits (best fit), so
        # big devices stay available for big requests.
        taken: list[Gpu] = []
        left = set(free)
        for need in sorted(request.vram_min, reverse=True):
            fits = [g for g in self.gpus if g.uuid in left and g.vram >= need]
            if not fits:
                return None
            best = min(fits, key=lambda g: (g.vram, self.gpus.index(g)))
            taken.append(best)
            left.discard(best.uuid)
        return sorted(taken, key=self.gpus.index)

    def try_acquire(self, request: GpuRequest) -> list[Gpu] | None:
        if not request.count:
            return []
        with self._cond:
            placed = self._place(request, self._free)
            if placed is not None:
                self._free -= {g.uuid for g in placed}
            return placed

    def acquire(self, request: GpuRequest, stop: threading.Event | None = None) -> list[Gpu] | None:
        """Block until devices are free; None when ``stop`` was set while waiting."""
        if not request.count:
            return []
        with self._cond:
            while True:
                if stop is not None and stop.is_set():
                    return None
                placed = self._place(request, self._free)
                if placed is not None:
                    self._free -= {g.uuid for g in placed}
                    return placed
                self._cond.wait(0.2)

    def release(self, gpus: Iterable[Gpu]) -> None:
        with self._cond:
            self._free |= {g.uuid for g in gpus}
            self._cond.notify_all()


def host_allocator(gpu_ids: str | None, inventory: list[Gpu] | None = None) -> GpuAllocator:
    """The allocator for this host: detected (or injected) devices, restricted."""
    found = detect_gpus() if inventory is None else inventory
    return GpuAllocator(
        restrict(found, gpu_ids=parse_id_list(gpu_ids), visible=os.environ.get("CUDA_VISIBLE_DEVICES"))
    )
