"""A fake container runtime for pipeline and dispatcher tests that need GPUs.

No GPU (and no nvidia runtime for Docker) exists on the development machines: a container
asking for devices cannot start here. This fake implements
:class:`faice.runtime.containers.ContainerRuntime`, keeps every :class:`ContainerSpec` it
was given (the device ids faice chose) and "runs" each container for ``seconds``, recording
when it ran, so tests can check placement and overlap. Everything else is the real pipeline.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

from faice.runtime.containers import ContainerExit, ContainerHandle, ContainerSpec, ImageInfo


class FakeRuntime:
    def __init__(self, seconds: float = 0.5):
        self.seconds = seconds
        self.specs: dict[str, ContainerSpec] = {}
        self.spans: dict[str, list[float]] = {}  # batch id -> [start, end]
        self._lock = threading.Lock()

    def ensure_image(self, ref, *, auth=None, allow_pull=True, on_progress=None) -> tuple[ImageInfo, bool]:
        return ImageInfo(ref, "sha256:fake", None, ""), False

    def create(self, spec: ContainerSpec) -> ContainerHandle:
        name = spec.name or f"fake-{spec.batch_id}"
        with self._lock:
            self.specs[name] = spec
        return ContainerHandle(name, name)

    def start(self, handle: ContainerHandle) -> None:
        with self._lock:
            self.spans[self.specs[handle.id].batch_id] = [time.monotonic(), 0.0]

    def wait(self, handle: ContainerHandle, timeout: float) -> int | None:
        span = self.spans[self.specs[handle.id].batch_id]
        left = span[0] + self.seconds - time.monotonic()
        if left > timeout:
            time.sleep(timeout)
            return None
        time.sleep(max(0.0, left))
        if not span[1]:
            span[1] = time.monotonic()
        return 0

    def stop(self, handle: ContainerHandle, grace: float) -> None:
        self.spans[self.specs[handle.id].batch_id][1] = time.monotonic()

    kill = stop

    def exit_state(self, handle: ContainerHandle) -> ContainerExit:
        return ContainerExit(0, False)

    def logs(self, handle: ContainerHandle, stream: str) -> Iterator[bytes]:
        return iter([b"fake\n"] if stream == "stdout" else [])

    def remove(self, handle: ContainerHandle) -> None: ...

    def forget(self, handle: ContainerHandle) -> None: ...

    def kill_all(self) -> None: ...

    def reclaim(self, path: Path, image: str, run_id: str) -> None: ...

    def close(self) -> None: ...

    def gpu_ids(self) -> dict[str, list[str]]:
        """The device ids each batch's container was created with."""
        return {spec.batch_id: list(spec.gpu_ids) for spec in self.specs.values()}
