"""The container runtime: a thin layer over the docker SDK with faice's conventions.

Every container faice creates carries ``org.faice.run``, ``org.faice.batch``,
``org.faice.version`` and its owner (``org.faice.owner`` = ``host:pid:start-time``), so a run
killed with SIGKILL can be cleaned up by the next start: containers whose owner process is
gone are removed. Images are pulled once per run and only when absent.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from faice import __version__
from faice.errors import EngineError
from faice.secrets import REDACTOR

LABEL_RUN = "org.faice.run"
LABEL_BATCH = "org.faice.batch"
LABEL_VERSION = "org.faice.version"
LABEL_OWNER = "org.faice.owner"


def process_start_time(pid: int) -> str:
    """The kernel's start time of ``pid`` (tells a live process from a reused pid)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            return handle.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def owner_token(pid: int | None = None) -> str:
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}:{pid}:{process_start_time(pid)}"


def owner_alive(token: str) -> bool:
    """Is the faice process named by ``token`` still running? Other hosts count as alive."""
    host, _, rest = token.partition(":")
    pid_text, _, start = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return True
    pid = int(pid_text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return not start or process_start_time(pid) == start


def import_docker():
    """The docker SDK, imported without paramiko unless DOCKER_HOST needs it (ssh://).

    docker-py imports paramiko at import time only to offer ssh:// hosts; that costs ~0.1 s of
    a one-batch run. Hiding paramiko for the import leaves the SDK without its SSH adapter,
    which a local socket or tcp:// host never uses; faice's own ssh connector imports
    paramiko normally later on.
    """
    import sys

    if "docker" in sys.modules or "paramiko" in sys.modules or os.environ.get("DOCKER_HOST", "").startswith("ssh://"):
        import docker

        return docker
    sys.modules["paramiko"] = None  # type: ignore[assignment]  # makes `import paramiko` fail
    try:
        import docker
    finally:
        del sys.modules["paramiko"]
    return docker


def connect(timeout: int = 120):
    """A docker client from the environment (DOCKER_HOST etc.), checked with a ping."""
    try:
        docker = import_docker()
        client = docker.from_env(timeout=timeout)
        client.ping()
    except Exception as exc:
        raise EngineError(
            f"could not connect to the Docker engine: {exc}",
            hint="is dockerd running and may this user use it (DOCKER_HOST, docker group)?",
        ) from None
    return client


@dataclass
class ImageInfo:
    ref: str
    id: str
    digest: str | None
    user: str  # Config.User ('' = root)


def ensure_image(
    client,
    ref: str,
    *,
    auth: dict[str, Any] | None = None,
    allow_pull: bool = True,
    on_progress: Callable[[str], None] | None = None,
) -> tuple[ImageInfo, bool]:
    """The image, pulled only when it is absent (upstream pulled on every run).

    Returns (info, pulled)."""
    import docker

    pulled = False
    try:
        image = client.images.get(ref)
    except docker.errors.ImageNotFound:
        if not allow_pull:
            raise EngineError(
                f"container.settings.image.url: image {ref!r} is not present and --disable-pull was given"
            ) from None
        image = _pull(client, ref, auth, on_progress)
        pulled = True
    except docker.errors.APIError as exc:
        raise EngineError(f"container.settings.image.url: cannot inspect image {ref!r}: {exc.explanation}") from None
    digests = image.attrs.get("RepoDigests") or []
    user = ((image.attrs.get("Config") or {}).get("User")) or ""
    return ImageInfo(ref, image.id, digests[0] if digests else None, user), pulled


def _pull(client, ref: str, auth: dict[str, Any] | None, on_progress: Callable[[str], None] | None):
    import docker

    repository, tag = _split_ref(ref)
    credentials = None
    if auth:
        REDACTOR.add(auth.get("password"), auth.get("_password"))
        credentials = {
            "username": auth.get("username", auth.get("_username")),
            "password": auth.get("password", auth.get("_password")),
        }
    try:
        last = ""
        for event in client.api.pull(repository, tag=tag, stream=True, decode=True, auth_config=credentials):
            if "error" in event:
                raise EngineError(REDACTOR.redact(f"container.settings.image.url: pulling {ref!r} failed: {event['error']}"))
            status = " ".join(str(event.get(k, "")) for k in ("id", "status", "progress")).strip()
            if on_progress and status and status != last:
                on_progress(status)
                last = status
        return client.images.get(ref)
    except docker.errors.APIError as exc:
        raise EngineError(REDACTOR.redact(f"container.settings.image.url: pulling {ref!r} failed: {exc.explanation}")) from None


def _split_ref(ref: str) -> tuple[str, str | None]:
    if "@" in ref:
        return ref, None
    name, _, tag = ref.rpartition(":")
    if name and "/" not in tag:
        return name, tag
    return ref, "latest"


@dataclass
class ContainerSpec:
    """What one batch's container needs; becomes ``containers.create`` keyword arguments."""

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

    def create_kwargs(self) -> dict[str, Any]:
        import docker

        kwargs: dict[str, Any] = {
            "image": self.image,
            "command": self.command,
            "working_dir": self.workdir,
            "labels": {
                LABEL_RUN: self.run_id,
                LABEL_BATCH: self.batch_id,
                LABEL_VERSION: __version__,
                LABEL_OWNER: owner_token(),
                **({"org.faice.keep": "1"} if self.keep else {}),
            },
            "volumes": {host: {"bind": target, "mode": mode} for host, target, mode in self.binds},
            "environment": dict(self.environment),
            "detach": True,
            "ulimits": [docker.types.Ulimit(name="nofile", soft=4096, hard=4096)],
        }
        if self.name:
            kwargs["name"] = self.name
        if self.user is not None:
            kwargs["user"] = self.user
        if self.ram_mb:
            kwargs["mem_limit"] = kwargs["memswap_limit"] = f"{int(self.ram_mb)}m"
        if self.gpu_ids:
            kwargs["device_requests"] = [
                docker.types.DeviceRequest(driver="nvidia", device_ids=list(self.gpu_ids), capabilities=[["gpu"]])
            ]
        return kwargs


class ContainerTracker:
    """The containers of this process, so that every exit path can remove them."""

    def __init__(self, client) -> None:
        self.client = client
        self._lock = threading.Lock()
        self._live: dict[str, Any] = {}

    def create(self, spec: ContainerSpec):
        container = self.client.containers.create(**spec.create_kwargs())
        with self._lock:
            self._live[container.id] = container
        return container

    def remove(self, container, *, force: bool = True) -> None:
        import docker

        with self._lock:
            self._live.pop(container.id, None)
        try:
            container.remove(force=force, v=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            if "already in progress" not in str(exc):
                raise

    def has_live(self) -> bool:
        with self._lock:
            return bool(self._live)

    def forget(self, container) -> None:
        with self._lock:
            self._live.pop(container.id, None)

    def kill_all(self) -> None:
        """Kill and remove every container still registered (second Ctrl-C, final cleanup)."""
        with self._lock:
            live = list(self._live.values())
        for container in live:
            try:
                self.remove(container, force=True)
            except Exception:
                pass


def remove_run_containers(client, run_id: str) -> int:
    """Remove every container labelled with ``run_id``; returns how many."""
    removed = 0
    for container in client.containers.list(all=True, filters={"label": f"{LABEL_RUN}={run_id}"}, ignore_removed=True):
        try:
            container.remove(force=True, v=True)
            removed += 1
        except Exception:
            pass
    return removed


def remove_leftovers(client) -> list[str]:
    """Remove containers of faice runs whose owner process no longer exists (e.g. SIGKILLed).

    Containers kept on purpose with ``--leave-container`` carry ``org.faice.keep`` and stay."""
    removed = []
    for container in client.containers.list(all=True, filters={"label": LABEL_RUN}, ignore_removed=True):
        labels = container.labels or {}
        if labels.get("org.faice.keep") == "1":
            continue
        token = labels.get(LABEL_OWNER)
        if token and not owner_alive(token):
            try:
                container.remove(force=True, v=True)
                removed.append(container.name)
            except Exception:
                pass
    return removed
