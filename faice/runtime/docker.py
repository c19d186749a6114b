"""The Docker implementation of :class:`faice.runtime.containers.ContainerRuntime`.

Every container faice creates carries ``org.faice.run``, ``org.faice.batch``,
``org.faice.version`` and its owner (``org.faice.owner`` = ``host:pid:start-time``), so a run
killed with SIGKILL can be cleaned up by the next start: containers whose owner process is
gone are removed. Images are pulled once per run and only when absent.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from faice import __version__
from faice.errors import EngineError
from faice.runtime.containers import (
    LABEL_BATCH,
    LABEL_KEEP,
    LABEL_OWNER,
    LABEL_RUN,
    LABEL_VERSION,
    ContainerError,
    ContainerExit,
    ContainerHandle,
    ContainerSpec,
    ImageInfo,
    check_image_ref,
)
from faice.secrets import REDACTOR

__all__ = ["LABEL_BATCH", "LABEL_RUN", "DockerRuntime", "import_docker", "owner_alive", "owner_token"]


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

    bad_ref = check_image_ref(ref)
    if bad_ref:
        raise EngineError(f"container.settings.image.url: {bad_ref}")
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




def remove_leftovers(client: Any) -> list[str]:
    """Remove containers of faice runs whose owner process no longer exists (e.g. SIGKILLed).

    Containers kept on purpose with ``--leave-container`` carry ``org.faice.keep`` and stay."""
    docker = import_docker()
    removed = []
    for container in client.containers.list(all=True, filters={"label": LABEL_RUN}, ignore_removed=True):
        labels = container.labels or {}
        if labels.get(LABEL_KEEP) == "1":
            continue
        token = labels.get(LABEL_OWNER)
        if token and not owner_alive(token):
            try:
                container.remove(force=True, v=True)
                removed.append(container.name)
            except (docker.errors.NotFound, docker.errors.APIError):
                pass  # gone meanwhile, or being removed by another faice
    return removed


def create_kwargs(spec: ContainerSpec) -> dict[str, Any]:
    """``containers.create`` keyword arguments: faice's labels, binds, limits and devices."""
    docker = import_docker()
    kwargs: dict[str, Any] = {
        "image": spec.image,
        "command": spec.command,
        "working_dir": spec.workdir,
        "labels": {
            LABEL_RUN: spec.run_id,
            LABEL_BATCH: spec.batch_id,
            LABEL_VERSION: __version__,
            LABEL_OWNER: owner_token(),
            **({LABEL_KEEP: "1"} if spec.keep else {}),
        },
        "volumes": {host: {"bind": target, "mode": mode} for host, target, mode in spec.binds},
        "environment": dict(spec.environment),
        "detach": True,
        "ulimits": [docker.types.Ulimit(name="nofile", soft=4096, hard=4096)],
    }
    if spec.name:
        kwargs["name"] = spec.name
    if spec.user is not None:
        kwargs["user"] = spec.user
    if spec.ram_mb:
        kwargs["mem_limit"] = kwargs["memswap_limit"] = f"{int(spec.ram_mb)}m"
    if spec.gpu_ids:
        kwargs["device_requests"] = [
            docker.types.DeviceRequest(driver="nvidia", device_ids=list(spec.gpu_ids), capabilities=[["gpu"]])
        ]
    return kwargs


@contextlib.contextmanager
def docker_errors() -> Iterator[None]:
    """docker-py and requests errors as :class:`ContainerError`.

    A 4xx (bad mount, missing image) or a 500 from the OCI runtime repeats itself; only a
    gateway/unavailable answer or a broken connection is worth another attempt."""
    import requests

    docker = import_docker()
    try:
        yield
    except ContainerError:
        raise
    except docker.errors.APIError as exc:
        raise ContainerError(REDACTOR.redact(f"Docker: {exc.explanation or exc}"),
                             transient=exc.status_code in (502, 503, 504)) from None
    except (requests.exceptions.RequestException, docker.errors.DockerException) as exc:
        raise ContainerError(REDACTOR.redact(f"Docker: {exc}"), transient=True) from None


class DockerRuntime:
    """The containers of this process on one Docker engine; every exit path can remove them."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self._lock = threading.Lock()
        self._live: dict[str, Any] = {}

    @classmethod
    def connect(cls) -> DockerRuntime:
        return cls(connect())

    def ensure_image(self, ref: str, *, auth: dict | None = None, allow_pull: bool = True,
                     on_progress: Callable[[str], None] | None = None) -> tuple[ImageInfo, bool]:
        return ensure_image(self.client, ref, auth=auth, allow_pull=allow_pull, on_progress=on_progress)

    def remove_leftovers(self) -> list[str]:
        return remove_leftovers(self.client)

    def _container(self, handle: ContainerHandle) -> Any:
        with self._lock:
            container = self._live.get(handle.id)
        return container if container is not None else self.client.containers.get(handle.id)

    def create(self, spec: ContainerSpec) -> ContainerHandle:
        with docker_errors():
            container = self.client.containers.create(**create_kwargs(spec))
        with self._lock:
            self._live[container.id] = container
        return ContainerHandle(container.id, container.name)

    def start(self, handle: ContainerHandle) -> None:
        with docker_errors():
            self._container(handle).start()

    def wait(self, handle: ContainerHandle, timeout: float) -> int | None:
        import requests

        with docker_errors():
            try:
                result = self._container(handle).wait(timeout=timeout)
            except requests.exceptions.ConnectionError:  # docker-py's read timeout
                return None
        return int(result.get("StatusCode", -1))

    def stop(self, handle: ContainerHandle, grace: float) -> None:
        with docker_errors():
            self._container(handle).stop(timeout=int(grace))

    def kill(self, handle: ContainerHandle) -> None:
        with docker_errors():
            self._container(handle).kill()

    def exit_state(self, handle: ContainerHandle) -> ContainerExit:
        with docker_errors():
            container = self._container(handle)
            container.reload()
        state = container.attrs.get("State") or {}
        return ContainerExit(int(state.get("ExitCode", -1)), bool(state.get("OOMKilled")))

    def logs(self, handle: ContainerHandle, stream: str) -> Iterator[bytes]:
        with docker_errors():
            yield from self._container(handle).logs(stdout=stream == "stdout", stderr=stream == "stderr",
                                                    stream=True)

    def remove(self, handle: ContainerHandle) -> None:
        docker = import_docker()
        with self._lock:
            container = self._live.pop(handle.id, None)
        try:
            with docker_errors():
                (container or self.client.containers.get(handle.id)).remove(force=True, v=True)
        except ContainerError as exc:
            if "already in progress" not in str(exc) and "No such container" not in str(exc):
                raise
        except docker.errors.NotFound:
            pass

    def forget(self, handle: ContainerHandle) -> None:
        with self._lock:
            self._live.pop(handle.id, None)

    def has_live(self) -> bool:
        with self._lock:
            return bool(self._live)

    def kill_all(self) -> None:
        """Kill and remove every container still registered (second Ctrl-C, final cleanup)."""
        with self._lock:
            live = [ContainerHandle(c.id, c.name) for c in self._live.values()]
        for handle in live:
            try:
                self.remove(handle)
            except Exception:
                pass

    def reclaim(self, path: Path, image: str, run_id: str) -> None:
        """Give files the image's user wrote back to the user running faice.

        As root this is a chown on the host; otherwise a throwaway root container of the
        same image does it (only when some file is foreign), so the user can read and
        remove the run directory."""
        path = Path(path)
        if not path.exists():
            return
        uid, gid = os.geteuid(), os.getegid()
        foreign = []
        for root, dirs, files in os.walk(path):
            for name in [*dirs, *files, ""]:
                full = os.path.join(root, name) if name else root
                try:
                    if os.lstat(full).st_uid != uid:
                        foreign.append(full)
                except OSError:
                    pass
        if foreign and uid == 0:
            for full in foreign:
                try:
                    os.lchown(full, uid, gid)
                except OSError:
                    pass
        elif foreign:
            spec = ContainerSpec(image=image, command=["chown", "-R", f"{uid}:{gid}", "/cc/reclaim"],
                                 run_id=run_id, batch_id="reclaim",
                                 binds=[(str(path.resolve()), "/cc/reclaim", "rw")], user="0:0", workdir="/")
            handle = self.create(spec)
            try:
                self.start(handle)
                self.wait(handle, 120)
            finally:
                self.remove(handle)
        if path.name == "outputs":
            os.chmod(path, 0o755)

    def close(self) -> None:
        if not self.has_live():
            try:
                self.client.close()
            except Exception:
                pass


def remove_batch_containers(batch_id: str) -> None:
    """Remove every container of one batch (an agency batch whose server stopped mid-run)."""
    docker = import_docker()
    try:
        client = docker.from_env(timeout=60)
    except Exception:  # no engine: nothing can be left over
        return
    try:
        for container in client.containers.list(all=True, filters={"label": f"{LABEL_BATCH}={batch_id}"},
                                                ignore_removed=True):
            try:
                container.remove(force=True)
            except docker.errors.NotFound:
                pass  # gone between listing and removing
    except Exception:
        pass
    finally:
        client.close()
