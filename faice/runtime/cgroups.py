"""A memory cgroup per batch, for runtimes that set no limit of their own or cannot say when
the kernel killed a batch for memory.

Podman 4.3 on cgroup v1 reports ``OOMKilled: false`` for an OOM kill, and Charliecloud and
Apptainer (unprivileged) set no memory limit at all. Where faice may create cgroups (root,
or a delegated cgroup v2 subtree) it makes ``faice/<batch>``, sets the limit there and puts
the batch's processes below it; the kernel's own counters then tell an OOM kill apart from
any other end: ``memory.events`` ``oom_kill`` on v2 (hierarchical), and on v1, whose
``oom_kill`` counts only the cgroup's own tasks, the peak usage reaching the limit.
Where faice may not, :func:`MemoryCgroup.create` returns None and the plan says so.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")
PARENT = "faice"


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
