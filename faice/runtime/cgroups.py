"""A memory cgroup per batch, for runtimes that set no limit of their own or cannot say when
the kernel killed a batch for memory.

Podman 4.3 on cgroup v1 reports ``OOMKilled: false`` for an OOM kill, and Charliecloud and
Apptainer (unprivileged) set no memory limit at all. Where faice may create cgroups (root,
or a delegated cgroup v2 subtree) it makes ``faice/<batch>``, sets the limit there and puts
the batch's processes below it; the kernel's own counters then tell an OOM kill apart from
any other end: ``memory.events`` ``oom_kill`` on v2 (hierarchical), and on v1, whose
``oom_kill`` counts only the cgroup's own tasks, the peak usage reaching the limit.
Where faice may not, :func:`MemoryCgroup.create` returns None and the plan says so.

Each cgroup's name ends in its faice process's pid and start time (``<batch name>.<pid>-<start>``),
so when a faice is SIGKILLed the next start of any faice on the host removes the empty cgroups
it left (:func:`remove_stale_cgroups`): only names of that form, only when that process is
gone, only when empty (the kernel refuses to remove a cgroup that still holds a process).
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")
PARENT = "faice"
# <batch name>.<pid>-<start time>: the cgroup of a batch of faice process <pid>
OWNED_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\.(?P<pid>[0-9]+)-(?P<start>[0-9]+)")


def _start_time(pid: int) -> str:
    """The kernel's start time of ``pid`` (tells a live process from a reused pid), or ''."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            return handle.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def owned_name(name: str) -> str:
    """The cgroup name of batch ``name`` of this faice process."""
    pid = os.getpid()
    return f"{name}.{pid}-{_start_time(pid) or 0}"


def _version() -> int | None:
    if (ROOT / "cgroup.controllers").exists():
        return 2
    if (ROOT / "memory" / "memory.limit_in_bytes").exists():
        return 1
    return None


def can_limit_memory() -> bool:
    """May this process make memory cgroups (root on v1/v2, or a writable v2 tree)?"""
    version = _version()
    if version == 1:
        return os.access(ROOT / "memory", os.W_OK)
    if version == 2:
        return os.access(ROOT, os.W_OK) and "memory" in (ROOT / "cgroup.controllers").read_text()
    return False


class MemoryCgroup:
    """``faice/<name>`` with a memory limit; :meth:`oom_killed` after the batch ended."""

    def __init__(self, path: Path, relative: str, version: int, limit: int):
        self.path = path
        self.relative = relative  # e.g. "/faice/<name>", what --cgroup-parent takes
        self.version = version
        self.limit = limit

    @classmethod
    def create(cls, name: str, limit_mb: int) -> MemoryCgroup | None:
        version = _version()
        if version is None or not can_limit_memory():
            return None
        limit = int(limit_mb) * 2**20
        base = ROOT / "memory" if version == 1 else ROOT
        try:
            if version == 2:
                _enable_memory(ROOT)
                (ROOT / PARENT).mkdir(exist_ok=True)
                _enable_memory(ROOT / PARENT)
            name = owned_name(name)
            path = base / PARENT / name
            path.mkdir(parents=True, exist_ok=True)
            if version == 1:
                (path / "memory.limit_in_bytes").write_text(str(limit))
                with contextlib.suppress(OSError):  # no swap accounting: the limit alone
                    (path / "memory.memsw.limit_in_bytes").write_text(str(limit))
            else:
                (path / "memory.max").write_text(str(limit))
                with contextlib.suppress(OSError):
                    (path / "memory.swap.max").write_text("0")
        except OSError:
            return None
        return cls(path, f"/{PARENT}/{name}", version, limit)

    def add(self, pid: int) -> None:
        """Move ``pid`` (a process faice just started) into this cgroup."""
        (self.path / "cgroup.procs").write_text(str(pid))

    def oom_killed(self) -> bool:
        try:
            if self.version == 2:
                return _counter((self.path / "memory.events").read_text(), "oom_kill") > 0
            if _counter((self.path / "memory.oom_control").read_text(), "oom_kill") > 0:
                return True
            peak = int((self.path / "memory.max_usage_in_bytes").read_text())
            return peak >= self.limit
        except (OSError, ValueError):
            return False

    def remove(self) -> None:
        """Remove it and whatever empty cgroups a runtime left below it."""
        if not self.path.exists():
            return
        for root, dirs, _files in os.walk(self.path, topdown=False):
            for name in dirs:
                with contextlib.suppress(OSError):
                    os.rmdir(os.path.join(root, name))
        with contextlib.suppress(OSError):
            os.rmdir(self.path)


def _parents() -> list[Path]:
    """Where faice's batch cgroups live (v2; v1's memory controller)."""
    return [ROOT / PARENT, ROOT / "memory" / PARENT]


def remove_stale_cgroups(*, settle_s: float = 2.0) -> list[str]:
    """Remove the empty batch cgroups of faice processes that no longer run (SIGKILLed: their
    batches' cgroups stayed). Only faice's own naming (:data:`OWNED_NAME`) below ``faice/``,
    only when its process is gone (pid and start time), only empty ones: a cgroup whose last
    processes are still dying (just killed) gets ``settle_s`` to empty, then stays."""
    removed: list[str] = []
    for parent in _parents():
        try:
            entries = list(os.scandir(parent))
        except OSError:
            continue
        for entry in entries:
            found = OWNED_NAME.fullmatch(entry.name)
            if found is None or not entry.is_dir(follow_symlinks=False):
                continue
            pid, start = int(found["pid"]), found["start"]
            if pid == os.getpid() or _start_time(pid) == start:
                continue  # its faice still runs (a reused pid has another start time)
            if _remove_empty_tree(Path(entry.path), settle_s):
                removed.append(f"cgroup {parent.name}/{entry.name}")
    return removed


def _remove_empty_tree(path: Path, settle_s: float) -> bool:
    """rmdir ``path`` and the empty cgroups below it, deepest first; False if any holds a process."""
    deadline = time.monotonic() + settle_s
    while True:
        busy = False
        for root, _dirs, _files in os.walk(path, topdown=False):  # children before parents
            try:
                if Path(root, "cgroup.procs").read_text().strip():
                    busy = True
                    continue
                os.rmdir(root)
            except FileNotFoundError:
                continue
            except OSError:  # EBUSY: a process (or a child cgroup) is still there
                busy = True
        if not busy:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def _enable_memory(path: Path) -> None:
    control = path / "cgroup.subtree_control"
    if "memory" not in control.read_text().split():
        control.write_text("+memory")


def _counter(text: str, key: str) -> int:
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            return int(value)
    return 0
