"""What the batch pipeline asks of a container runtime, independent of Docker.

The pipeline sees :class:`ContainerRuntime` only: create/start/wait/stop/kill/logs/remove
on opaque :class:`ContainerHandle` s, the exit state, and :class:`ContainerError` with a
``transient`` flag. :mod:`faice.runtime.docker` implements it over docker-py;
:mod:`faice.runtime.process` over a runtime's command line (Podman, Charliecloud, Apptainer,
Enroot; :mod:`faice.runtime.select` picks one by name); tests pass a fake one, so the
pipeline runs without a container engine in unit tests.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from faice.errors import EngineError
from faice.runtime.private_images import PrivateImages

LABEL_RUN = "org.faice.run"
LABEL_BATCH = "org.faice.batch"
LABEL_VERSION = "org.faice.version"
LABEL_OWNER = "org.faice.owner"
LABEL_KEEP = "org.faice.keep"

# An image reference as Docker's reference grammar has it ([host[:port]/]path[:tag][@digest]),
# case left to Docker, or an image id. Checked before any Docker call: the reference comes
# from a RED file, possibly someone else's (the agency).
_COMPONENT = r"[A-Za-z0-9]+(?:(?:[._]|__|-+)[A-Za-z0-9]+)*"
IMAGE_REF = re.compile(
    rf"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?(?::[0-9]{{1,5}})?/)?{_COMPONENT}(?:/{_COMPONENT})*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?"
    r"|sha256:[0-9a-f]{64}"
)


def check_image_ref(ref: str) -> str | None:
    """Why ``ref`` is not an image reference Docker could mean (None: it is one)."""
    if len(ref) > 512 or not IMAGE_REF.fullmatch(ref):
        return (f"{ref[:200]!r} is not an image reference "
                "(expected [registry[:port]/]name[:tag][@digest], e.g. python:3.12)")
    return None


class ContainerError(EngineError):
    """The runtime failed (not the command in the container); ``transient`` ones may pass."""

    def __init__(self, message: str, *, transient: bool = False):
        super().__init__(message)
        self.transient = transient


class CommandNotRunnable(ContainerError):
    """The container could not start its command: not in the image (127) or not executable (126)."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


@dataclass
class ContainerSpec:
    """What one batch's container needs."""

    image: str
    command: list[str]
    run_id: str
    batch_id: str
    binds: list[tuple[str, str, str]] = field(default_factory=list)  # (host, container, "ro"/"rw")
    environment: dict[str, str] = field(default_factory=dict)
    ram_mb: int | None = None
    gpu_ids: list[str] = field(default_factory=list)
    workdir: str = "/cc/outputs"
    user: str | None = None
    name: str | None = None
    keep: bool = False  # --leave-container: never removed as a leftover


@dataclass(frozen=True)
class ContainerHandle:
    """A container this process created; what the runtime needs to find it again."""

    id: str
    name: str


@dataclass(frozen=True)
class ContainerExit:
    code: int
    oom: bool  # killed by the kernel's OOM killer (the RAM limit)
    error: str | None = None  # the runtime itself failed (not the command): why


@dataclass
class ImageInfo:
    ref: str
    id: str
    digest: str | None
    user: str  # Config.User ('' = root)
    moved_from: str | None = None  # the id the tag named before an --pull always pull moved it


class ContainerRuntime(Protocol):
    name: str  # as ``container.engine`` / ``--runtime`` says it, and the batch record names it

    def ensure_image(
        self, ref: str, *, auth: dict | None = None, pull: str = "missing", account_logins: bool = True,
        private_images: PrivateImages | None = None,
        on_progress: Callable[[str], None] | None = None,
        on_note: Callable[[str], None] | None = None,
    ) -> tuple[ImageInfo, bool]:
        """The image by the pull policy (missing/always/never); ``on_note`` hears of a moved tag.
        An agency passes ``account_logins=False`` (only ``auth`` identifies to a registry) and
        its ``private_images`` (an image pulled with credentials is lent only to batches its
        registry accepts)."""

    def create(self, spec: ContainerSpec) -> ContainerHandle: ...

    def attach(self, handle: ContainerHandle) -> Iterator[tuple[str, bytes]]:
        """Called before :meth:`start`: every ``(stream, chunk)`` the command writes to
        ``stdout``/``stderr``, ending when its output ends."""

    def start(self, handle: ContainerHandle) -> None: ...

    def wait(self, handle: ContainerHandle, timeout: float) -> int | None:
        """The exit code, or None when the container still runs after ``timeout`` seconds."""

    def stop(self, handle: ContainerHandle, grace: float) -> None: ...

    def kill(self, handle: ContainerHandle) -> None: ...

    def exit_state(self, handle: ContainerHandle) -> ContainerExit: ...

    def logs(self, handle: ContainerHandle, stream: str) -> Iterator[bytes]:
        """The container's ``stdout`` or ``stderr`` as chunks of bytes."""

    def remove(self, handle: ContainerHandle) -> None: ...

    def forget(self, handle: ContainerHandle) -> None:
        """Keep the container (``--leave-container``): no longer removed by :meth:`kill_all`."""

    def kill_all(self) -> None: ...

    def remove_leftovers(self) -> list[str]:
        """What faice processes that died (SIGKILL) left on this host: containers by label,
        process groups, empty cgroups; what was removed, said in words."""

    def remove_batch(self, batch_id: str) -> list[str]:
        """What batch ``batch_id`` left on this host, whichever faice process ran it (an agency
        batch whose server stopped mid-run)."""

    def reclaim(self, path: Path, image: str, run_id: str) -> None:
        """Give files the image's user wrote under ``path`` back to the user running faice."""

    def close(self) -> None: ...
