"""GPU inventory, busy-device detection and allocation (docs/red-reference.md, "GPUs").

The inventory comes from NVML (``pynvml``, the ``faice[gpu]`` extra) when importable, else
from ``nvidia-smi``, else from ``FAICE_GPU_INVENTORY`` (a JSON list, or the path of a JSON
file re-read at every look: for simulation and tests, since no GPU exists on the development
machines). It is restricted by ``--gpu-ids`` and by an outer allocation
(``CUDA_VISIBLE_DEVICES`` with indices or UUIDs, Slurm's ``SLURM_*_GPUS``), and devices are
always handed to Docker by physical UUID, so renumbering by an outer allocation never
points a batch at someone else's device.

Placement: a batch gets whole devices of its own, unless it declares ``shared: true`` with
the VRAM it needs: then batches that all allowed sharing are packed onto a device until its
memory is reserved (or used by other processes), never beyond. Before each placement the devices' running processes are
read; a device with processes faice did not start (no faice batch holds it) is busy:
``skip`` (default) places elsewhere, ``wait`` waits for it, ``ignore`` does not look.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from faice.errors import EngineError, UsageError

INVENTORY_ENV = "FAICE_GPU_INVENTORY"
BUSY_POLICIES = ("skip", "wait", "ignore")
# While a batch waits, the processes are read at most this often (nvidia-smi takes ~0.1 s).
PROBE_INTERVAL = 2.0


@dataclass(frozen=True)
class Gpu:
    """One device as the host reports it (``vram`` in MiB)."""

    index: str
    uuid: str
    vram: int
    name: str = ""
    driver: str = ""

    def describe(self) -> dict[str, Any]:
        """What a batch record keeps of the device it ran on."""
        return {"index": self.index, "uuid": self.uuid, "name": self.name, "vram": self.vram, "driver": self.driver}


@dataclass(frozen=True)
class GpuRequest:
    """What one batch needs: one minimum VRAM (MiB, 0 = any) per device; with ``shared`` the
    batch reserves exactly that much of a device other sharing batches may use too."""

    vram_min: tuple[int, ...] = ()
    shared: bool = False

    @property
    def count(self) -> int:
        return len(self.vram_min)

    @classmethod
    def from_settings(cls, gpus: Mapping[str, Any] | None) -> GpuRequest:
        """``container.settings.gpus`` → request. ``vramMin`` is optional (upstream crashed);
        faice's extension ``vram`` (MiB per device) and ``shared`` (boolean) allow packing."""
        if not gpus:
            return cls()
        shared = bool(gpus.get("shared"))
        vram = int(gpus.get("vram") or 0)
        if gpus.get("devices") is not None:
            needs = tuple(max(vram, int((d or {}).get("vramMin") or 0)) for d in gpus["devices"])
        else:
            needs = (vram,) * int(gpus.get("count") or 0)
        if shared and needs and not all(needs):
            raise UsageError("container.settings.gpus.shared: a shared GPU needs the batch's VRAM "
                             "(container.settings.gpus.vram, MiB) to pack batches without over-committing")
        return cls(needs, shared)

    def describe(self) -> str:
        wants = ", ".join(f"≥{v} MiB" if v else "any" for v in self.vram_min)
        return f"{self.count} GPU(s) ({wants}{', shared' if self.shared else ''})"


@dataclass(frozen=True)
class GpuProcess:
    """A compute process on a device, as NVML or ``nvidia-smi`` reports it."""

    pid: int
    used: int = 0  # MiB


def parse_id_list(text: str | None) -> list[str] | None:
    """``"0, 2"`` → ``["0", "2"]``; None/blank → None (a caller that tells unset from empty
    decides what an empty value means)."""
    if text is None:
        return None
    ids = [part.strip() for part in str(text).split(",") if part.strip()]
    return ids or None


# ----------------------------------------------------------------------------- reading the host


def _injected() -> list[dict[str, Any]] | None:
    """The simulated inventory of ``FAICE_GPU_INVENTORY`` (JSON text or a file path)."""
    value = os.environ.get(INVENTORY_ENV, "").strip()
    if not value:
        return None
    where = INVENTORY_ENV
    if not value.startswith("["):
        where = f"{INVENTORY_ENV} file {value}"
        try:
            value = Path(value).read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"{where}: cannot read: {exc.strerror}") from None
    try:
        data = json.loads(value)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{where}: not JSON: {exc.msg} at line {exc.lineno}") from None
    if not isinstance(data, list) or not all(isinstance(d, dict) for d in data):
        raise UsageError(f"{where}: expected a list of devices ({{index, uuid, vram, name, driver, processes}})")
    return data


def _gpu_of(entry: dict[str, Any], position: int) -> Gpu:
    try:
        return Gpu(str(entry.get("index", position)), str(entry.get("uuid") or f"GPU-sim-{position}"),
                   int(entry.get("vram") or 0), str(entry.get("name") or ""), str(entry.get("driver") or ""))
    except (TypeError, ValueError):
        raise UsageError(f"{INVENTORY_ENV}[{position}]: vram must be a number of MiB") from None


def detect_gpus() -> list[Gpu]:
    """All NVIDIA GPUs of this host; empty when there is no driver."""
    injected = _injected()
    if injected is not None:
        return [_gpu_of(entry, i) for i, entry in enumerate(injected)]
    try:
        import pynvml  # type: ignore[import-not-found,import-untyped,unused-ignore]
    except ImportError:
        return _detect_with_nvidia_smi()
    try:
        pynvml.nvmlInit()
    except Exception:
        return _detect_with_nvidia_smi()
    try:
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
        found = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            uuid = pynvml.nvmlDeviceGetUUID(handle)
            name = pynvml.nvmlDeviceGetName(handle)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            found.append(Gpu(str(index), _text(uuid), int(memory.total) // 2**20, _text(name), driver))
        return found
    finally:
        pynvml.nvmlShutdown()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _nvidia_smi(*query: str) -> str:
    try:
        done = subprocess.run(["nvidia-smi", *query, "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        raise EngineError(f"could not query GPUs with nvidia-smi: {exc}") from None
    return done.stdout


def _detect_with_nvidia_smi() -> list[Gpu]:
    if shutil.which("nvidia-smi") is None:
        return []
    return parse_nvidia_smi(_nvidia_smi("--query-gpu=index,uuid,memory.total,name,driver_version"))


def parse_nvidia_smi(text: str) -> list[Gpu]:
    """``index, uuid, memory.total, name[, driver_version]`` lines → devices."""
    found = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 3 and parts[0].isdigit():
            driver = parts[-1] if len(parts) >= 5 and parts[-1][:1].isdigit() else ""
            name = ", ".join(parts[3:-1] if driver else parts[3:])
            found.append(Gpu(parts[0], parts[1], int(float(parts[2])), name, driver))
    return found


def parse_compute_apps(text: str) -> dict[str, list[GpuProcess]]:
    """``nvidia-smi --query-compute-apps=gpu_uuid,pid,used_memory`` → processes by UUID."""
    found: dict[str, list[GpuProcess]] = {}
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 2 and parts[1].isdigit():
            used = int(float(parts[2])) if len(parts) > 2 and parts[2].replace(".", "", 1).isdigit() else 0
            found.setdefault(parts[0], []).append(GpuProcess(int(parts[1]), used))
    return found


def device_processes() -> dict[str, list[GpuProcess]]:
    """The compute processes running on each device now, by UUID (empty: none or no driver)."""
    injected = _injected()
    if injected is not None:
        return {_gpu_of(e, i).uuid: [GpuProcess(int(p.get("pid", 0)), int(p.get("usedMemory", 0)))
                                     for p in e.get("processes") or [] if isinstance(p, dict)]
                for i, e in enumerate(injected)}
    try:
        import pynvml
    except ImportError:
        pynvml = None
    if pynvml is not None:
        try:
            pynvml.nvmlInit()
        except Exception:
            pynvml = None
    if pynvml is None:
        if shutil.which("nvidia-smi") is None:
            return {}
        return parse_compute_apps(_nvidia_smi("--query-compute-apps=gpu_uuid,pid,used_memory"))
    try:
        found: dict[str, list[GpuProcess]] = {}
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            procs = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
            found[_text(pynvml.nvmlDeviceGetUUID(handle))] = [
                GpuProcess(int(p.pid), int(p.usedGpuMemory or 0) // 2**20) for p in procs]
        return found
    finally:
        pynvml.nvmlShutdown()


Probe = Callable[[], Mapping[str, list[GpuProcess]]]


# ----------------------------------------------------------------------------- outer allocations


def _match(ids: list[str], available: list[Gpu]) -> tuple[list[Gpu], list[str]]:
    """Devices named by index or by UUID (a unique UUID prefix, as CUDA accepts)."""
    chosen, unknown = [], []
    for ident in ids:
        hits = [g for g in available if ident == g.index or ident == g.uuid]
        if not hits and ident.upper().startswith(("GPU-", "MIG-")):
            hits = [g for g in available if g.uuid.startswith(ident)]
        if len(hits) == 1:
            chosen.append(hits[0])
        else:
            unknown.append(ident)
    return chosen, unknown


def outer_allocation(environ: Mapping[str, str]) -> tuple[list[str] | None, str]:
    """The devices an outer allocation gave this process, as physical ids, and where that came from.

    ``CUDA_VISIBLE_DEVICES`` with UUIDs is exact. With indices it may be renumbered from 0
    (Slurm with cgroups), so Slurm's node-level ``SLURM_STEP_GPUS``/``SLURM_JOB_GPUS`` win."""
    raw = environ.get("CUDA_VISIBLE_DEVICES")
    if raw is not None and not raw.strip():
        return [], "CUDA_VISIBLE_DEVICES"  # set but empty: CUDA sees no device, and neither may faice
    visible = parse_id_list(raw)
    if visible and all(v.upper().startswith(("GPU-", "MIG-")) for v in visible):
        return visible, "CUDA_VISIBLE_DEVICES"
    for name in ("SLURM_STEP_GPUS", "SLURM_JOB_GPUS"):
        ids = parse_id_list(environ.get(name))
        if ids and ids != ["NoDevFiles"]:
            return ids, name
    if visible == ["NoDevFiles"]:
        return [], "CUDA_VISIBLE_DEVICES"
    return visible, "CUDA_VISIBLE_DEVICES"


def restrict(gpus: Iterable[Gpu], *, gpu_ids: list[str] | None = None, visible: str | None = None,
             environ: Mapping[str, str] | None = None) -> list[Gpu]:
    """Keep the devices allowed by an outer allocation and by ``--gpu-ids`` (indices or UUIDs).

    An outer allocation by index that does not fit the inventory but has as many ids as
    there are devices was renumbered (cgroup-confined NVML sees only the allocated devices):
    then every device seen is allocated. An id of ``--gpu-ids`` that names no device is a
    usage error, not a silent no-op."""
    available = list(gpus)
    env = dict(environ or {})
    if visible is not None:
        env["CUDA_VISIBLE_DEVICES"] = visible
    outer, source = outer_allocation(env)
    if outer is not None:
        chosen, unknown = _match(outer, available)
        if unknown and len(outer) == len(available) and all(i.isdigit() for i in outer):
            chosen = available  # renumbered from 0 by a cgroup: all we see is ours
        elif unknown and source.startswith("SLURM_") and env.get("CUDA_VISIBLE_DEVICES"):
            chosen, _ = _match(parse_id_list(env["CUDA_VISIBLE_DEVICES"]) or [], available)
        available = [g for g in available if g in chosen]
    if gpu_ids is not None:
        chosen, unknown = _match(gpu_ids, available)
        if unknown:
            have = ", ".join(g.index for g in available) or "none"
            raise UsageError(f"--gpu-ids: no GPU {', '.join(unknown)} on this host (available: {have})")
        available = [g for g in available if g in chosen]
    return available


# ----------------------------------------------------------------------------- allocation


@dataclass
class _Device:
    """What faice has placed on one device: an exclusive batch, or sharing batches' VRAM."""

    exclusive: int = 0
    reserved: int = 0
    sharers: int = 0

    @property
    def idle(self) -> bool:
        return not self.exclusive and not self.sharers


@dataclass
class Placement:
    """Devices of one batch with the VRAM it reserved on each (0 = whole device)."""

    gpus: list[Gpu]
    reserved: list[int] = field(default_factory=list)
    shared: bool = False


class GpuAllocator:
    """Hands devices to concurrent batches (whole, or packed by VRAM); blocks while none fit.

    ``probe`` reads the devices' running processes before each placement (at most every
    :data:`PROBE_INTERVAL` s while waiting); ``busy`` is the ``--gpu-busy`` policy."""

    def __init__(self, gpus: Iterable[Gpu], *, probe: Probe | None = None, busy: str = "skip"):
        if busy not in BUSY_POLICIES:
            raise UsageError(f"--gpu-busy: expected one of {', '.join(BUSY_POLICIES)}, got {busy!r}")
        self.gpus = list(gpus)
        self.busy_policy = busy
        self._probe = probe if busy != "ignore" else None
        self._devices = {g.uuid: _Device() for g in self.gpus}
        self._held: dict[int, Placement] = {}
        self._cond = threading.Condition()
        self._foreign: set[str] = set()
        self._used: dict[str, int] = {}  # uuid -> MiB processes use there (latest probe)
        self._probed_at = -1e9
        self._used_is_foreign = False
        # Tells the processes of this faice's own containers (set by the pipeline's Host);
        # without it, memory used beyond faice's reservations counts as someone else's.
        self.own_process: Callable[[int], bool] | None = None

    # -------------------------------------------------------------- busy devices
    def foreign_busy(self, *, fresh: bool = True) -> set[str]:
        """UUIDs of devices running processes faice did not start (no faice batch holds them)."""
        if self._probe is None:
            return set()
        if fresh or time.monotonic() - self._probed_at >= PROBE_INTERVAL:
            processes = self._probe()
            self._probed_at = time.monotonic()
            self._foreign = {u for u, procs in processes.items()
                             if procs and u in self._devices and self._devices[u].idle}
            own = self.own_process
            self._used = {u: sum(p.used for p in procs if own is None or not own(p.pid))
                          for u, procs in processes.items()}
            self._used_is_foreign = own is not None
        return {u for u in self._foreign if self._devices[u].idle}

    def busy_devices(self) -> list[Gpu]:
        with self._cond:
            busy = self.foreign_busy()
        return [g for g in self.gpus if g.uuid in busy]

    # -------------------------------------------------------------- planning
    def check(self, request: GpuRequest) -> None:
        """Fail before anything runs when no placement could ever satisfy ``request``, or (policy
        ``skip``) when only devices busy with other users' processes could."""
        if not self.possible(request):
            have = ", ".join(f"{g.index} ({g.vram} MiB)" for g in self.gpus) or "none"
            raise EngineError(
                f"container.settings.gpus: cannot be satisfied: {request.describe()} requested, available: {have}"
            )
        if self.busy_policy == "skip":
            with self._cond:
                busy = self.foreign_busy()
            if busy and self._place(request, self._empty(), busy) is None:
                names = ", ".join(g.index for g in self.gpus if g.uuid in busy)
                raise EngineError(
                    f"container.settings.gpus: {request.describe()} fit only on GPUs busy with processes "
                    f"faice did not start ({names})",
                    hint="--gpu-busy wait waits for them to finish; --gpu-busy ignore uses them anyway",
                )

    def possible(self, request: GpuRequest) -> bool:
        """Whether some placement on these devices, all free, satisfies ``request``."""
        return not request.count or self._place(request, self._empty(), set()) is not None

    def max_concurrent(self, request: GpuRequest) -> int | None:
        """How many batches fit at once on devices not busy now (None = GPUs do not limit)."""
        if not request.count:
            return None
        with self._cond:
            busy = self.foreign_busy() if self.busy_policy == "skip" else set()
        devices, n = self._empty(), 0
        while (placed := self._place(request, devices, busy)) is not None:
            self._take(devices, request, placed)
            n += 1
        return n

    def _empty(self) -> dict[str, _Device]:
        return {g.uuid: _Device() for g in self.gpus}

    def _place(self, request: GpuRequest, devices: dict[str, _Device], busy: set[str],
               used: Mapping[str, int] | None = None) -> list[tuple[Gpu, int]] | None:
        """Devices for ``request`` paired with the VRAM each is chosen for, or None.

        Largest demands first. A shared batch goes to the fullest sharing device it fits on
        (packing), else the smallest idle one; an exclusive one to the smallest idle device
        that fits (best fit), so big devices stay available for big requests.

        ``used``: the memory processes use on each device. Where :attr:`own_process` tells
        faice's own from others', a device's free VRAM is its size less faice's reservations
        and the others' use; else faice's batches are counted at what they reserved, what the
        processes use beyond that is someone else's, and the larger of the two is taken."""
        taken: list[tuple[Gpu, int]] = []
        for need in sorted(request.vram_min, reverse=True):
            fits = []
            for position, g in enumerate(self.gpus):
                d = devices[g.uuid]
                if any(g is t for t, _ in taken) or g.uuid in busy or d.exclusive:
                    continue
                in_use = (used or {}).get(g.uuid, 0)
                free = g.vram - (d.reserved + in_use if self._used_is_foreign else max(d.reserved, in_use))
                if request.shared and free >= need:
                    fits.append((0 if d.sharers else 1, free, position, g))
                elif not request.shared and d.idle and g.vram >= need:
                    fits.append((0, g.vram, position, g))
            if not fits:
                return None
            taken.append((min(fits, key=lambda f: f[:3])[3], need))
        return sorted(taken, key=lambda pair: self.gpus.index(pair[0]))

    @staticmethod
    def _take(devices: dict[str, _Device], request: GpuRequest, placed: list[tuple[Gpu, int]]) -> None:
        for gpu, need in placed:
            d = devices[gpu.uuid]
            if request.shared:
                d.reserved += need
                d.sharers += 1
            else:
                d.exclusive += 1

    # -------------------------------------------------------------- handing out
    def _grab(self, request: GpuRequest, fresh: bool) -> list[Gpu] | None:
        busy = self.foreign_busy(fresh=fresh) if self._probe is not None else set()
        placed = self._place(request, self._devices, busy, self._used if self._probe is not None else None)
        if placed is None:
            return None
        self._take(self._devices, request, placed)
        gpus = [g for g, _ in placed]
        self._held[id(gpus)] = Placement(gpus, [need if request.shared else 0 for _, need in placed], request.shared)
        return gpus

    def try_acquire(self, request: GpuRequest, *, fresh: bool = True) -> list[Gpu] | None:
        """Devices now, or None. ``fresh=False`` reuses a process reading younger than
        :data:`PROBE_INTERVAL` (a scheduler trying many batches in one round)."""
        if not request.count:
            return []
        with self._cond:
            return self._grab(request, fresh=fresh)

    def acquire(self, request: GpuRequest, stop: threading.Event | None = None) -> list[Gpu] | None:
        """Block until devices fit; None when ``stop`` was set while waiting."""
        if not request.count:
            return []
        with self._cond:
            fresh = True
            while True:
                if stop is not None and stop.is_set():
                    return None
                placed = self._grab(request, fresh)
                if placed is not None:
                    return placed
                fresh = False
                self._cond.wait(0.2)

    def release(self, gpus: list[Gpu]) -> None:
        """Give back what :meth:`acquire` handed out (the same list object)."""
        with self._cond:
            held = self._held.pop(id(gpus), None)
            if held is None:  # a list built elsewhere: release as exclusive devices
                held = Placement(list(gpus), [0] * len(gpus))
            for gpu, reserved in zip(held.gpus, held.reserved, strict=True):
                d = self._devices[gpu.uuid]
                if held.shared:
                    d.reserved -= reserved
                    d.sharers -= 1
                else:
                    d.exclusive = max(0, d.exclusive - 1)
            self._cond.notify_all()

    def reserved(self, gpus: list[Gpu]) -> list[int]:
        """The VRAM (MiB) reserved on each device of a placement (0: the whole device)."""
        held = self._held.get(id(gpus))
        return list(held.reserved) if held else [0] * len(gpus)


def host_allocator(gpu_ids: str | None, inventory: list[Gpu] | None = None, *, busy: str = "skip",
                   probe: Probe | None = None) -> GpuAllocator:
    """The allocator for this host: detected (or injected) devices, restricted to the outer
    allocation and ``--gpu-ids``, watching the devices' processes unless ``busy`` is ``ignore``."""
    found = detect_gpus() if inventory is None else inventory
    gpus = restrict(found, gpu_ids=parse_id_list(gpu_ids), environ=os.environ)
    if probe is None and inventory is None and gpus:
        probe = device_processes
    return GpuAllocator(gpus, probe=probe, busy=busy)
