"""A container runtime without Docker, for unit tests of the batch pipeline.

It implements :class:`faice.runtime.containers.ContainerRuntime`; a test gives it a
``command`` function that plays the container: it receives the spec (argv, binds,
environment) and returns what the container did. Mock by necessity only where a unit test
wants no dockerd; the same pipeline runs against the real engine in tests/engines/local/.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from faice.runtime.containers import ContainerError, ContainerExit, ContainerHandle, ContainerSpec, ImageInfo


@dataclass
class Played:
    """What one fake container did."""

    code: int = 0
    stdout: bytes = b""
    stderr: bytes = b""
    oom: bool = False
    seconds: float = 0.0  # how long it "runs" (wait() returns None until then)
    attach_breaks: bool = False  # the attached output stream fails after its first chunk


@dataclass
class _Container:
    spec: ContainerSpec
    played: Played | None = None
    started: float | None = None
    killed: bool = False
    ran: threading.Event = field(default_factory=threading.Event)  # started (or removed unstarted)


@dataclass
class FakeRuntime:
    name = "docker"  # plays the default runtime's part: records name it
    command: Callable[[ContainerSpec], Played] = lambda spec: Played()
    fail_create: list[ContainerError] = field(default_factory=list)  # raised by the next create() calls
    created: list[ContainerSpec] = field(default_factory=list)
    running: dict[str, float] = field(default_factory=dict)  # batch id → start time, while running
    history: list[tuple[str, float, float]] = field(default_factory=list)  # (batch id, start, end)
    _containers: dict[str, _Container] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def ensure_image(self, ref: str, *, auth=None, pull: str = "missing", account_logins: bool = True,
                     private_images=None, on_progress=None, on_note=None):
        return ImageInfo(ref, "sha256:" + "f" * 64, None, ""), False

    def create(self, spec: ContainerSpec) -> ContainerHandle:
        if self.fail_create:
            raise self.fail_create.pop(0)
        with self._lock:
            self.created.append(spec)
            name = spec.name or f"fake-{len(self.created)}"
            self._containers[name] = _Container(spec)
        return ContainerHandle(name, name)

    def start(self, handle: ContainerHandle) -> None:
        container = self._containers[handle.id]
        container.started = time.monotonic()
        with self._lock:
            self.running[container.spec.batch_id] = container.started
        container.played = self.command(container.spec)
        container.ran.set()

    def attach(self, handle: ContainerHandle) -> Iterator[tuple[str, bytes]]:
        container = self._containers[handle.id]

        def chunks() -> Iterator[tuple[str, bytes]]:
            container.ran.wait()
            played = container.played
            if played is None:  # removed without starting
                return
            for start in range(0, max(len(played.stdout), len(played.stderr)), 7):  # secrets split across chunks
                for stream, data in (("stdout", played.stdout), ("stderr", played.stderr)):
                    if data[start:start + 7]:
                        yield stream, data[start:start + 7]
                if played.attach_breaks:
                    raise ConnectionError("attach stream broken")

        return chunks()

    def wait(self, handle: ContainerHandle, timeout: float) -> int | None:
        container = self._containers[handle.id]
        assert container.played is not None and container.started is not None
        if container.killed:
            return self._end(container, 137)
        left = container.started + container.played.seconds - time.monotonic()
        if left > timeout:
            time.sleep(timeout)
            return None
        time.sleep(max(0.0, left))
        return self._end(container, container.played.code)

    def _end(self, container: _Container, code: int) -> int:
        with self._lock:
            start = self.running.pop(container.spec.batch_id, None)
            if start is not None:
                self.history.append((container.spec.batch_id, start, time.monotonic()))
        return code

    def stop(self, handle: ContainerHandle, grace: float) -> None:
        self._containers[handle.id].killed = True

    def kill(self, handle: ContainerHandle) -> None:
        self._containers[handle.id].killed = True

    def exit_state(self, handle: ContainerHandle) -> ContainerExit:
        container = self._containers[handle.id]
        played = container.played or Played()
        return ContainerExit(137 if container.killed else played.code, played.oom)

    def logs(self, handle: ContainerHandle, stream: str) -> Iterator[bytes]:
        played = self._containers[handle.id].played or Played()
        data = played.stdout if stream == "stdout" else played.stderr
        for start in range(0, len(data), 7):  # small chunks: secrets get split across them
            yield data[start:start + 7]

    def remove(self, handle: ContainerHandle) -> None:
        container = self._containers.pop(handle.id, None)
        if container is not None:
            container.ran.set()

    def forget(self, handle: ContainerHandle) -> None:
        pass

    def kill_all(self) -> None:
        for container in list(self._containers.values()):
            container.killed = True

    def reclaim(self, path: Path, image: str, run_id: str) -> None:
        pass

    def close(self) -> None:
        pass

    def remove_leftovers(self) -> list[str]:
        return []

    def remove_batch(self, batch_id: str) -> list[str]:
        return []


def outputs_dir(spec: ContainerSpec) -> Path:
    """The host directory bound at /cc/outputs (where the fake command writes its files)."""
    return Path(next(host for host, target, _mode in spec.binds if target == "/cc/outputs"))
