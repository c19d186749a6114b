"""The Docker implementation of :class:`faice.runtime.containers.ContainerRuntime`.

Every container faice creates carries ``org.faice.run``, ``org.faice.batch``,
``org.faice.version`` and its owner (``org.faice.owner`` = ``host:pid:start-time``), so a run
killed with SIGKILL can be cleaned up by the next start: containers whose owner process is
gone are removed. Images are pulled once per run, by the run's pull policy.
"""

from __future__ import annotations

import contextlib
import io
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
    CommandNotRunnable,
    ContainerError,
    ContainerExit,
    ContainerHandle,
    ContainerSpec,
    ImageInfo,
    check_image_ref,
)
from faice.runtime.private_images import PrivateImages
from faice.secrets import MASK, REDACTOR

__all__ = ["LABEL_BATCH", "LABEL_RUN", "DockerRuntime", "import_docker", "owner_alive", "owner_token"]


def process_start_time(pid: int) -> str:
    """The kernel's start time of ``pid`` (tells a live process from a reused pid)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            return handle.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


_OWN_TOKENS: dict[int, str] = {}  # pid -> token: a fork gets its own


def owner_token(pid: int | None = None) -> str:
    own = pid is None or pid == os.getpid()
    pid = os.getpid() if pid is None else pid
    if own and pid in _OWN_TOKENS:
        return _OWN_TOKENS[pid]
    token = f"{socket.gethostname()}:{pid}:{process_start_time(pid)}"
    if own:
        _OWN_TOKENS[pid] = token
    return token


PID_MAX = 2**22  # the largest pid_max Linux allows


def owner_alive(token: str) -> bool:
    """Is the faice process named by ``token`` still running? Other hosts count as alive."""
    host, _, rest = token.partition(":")
    pid_text, _, start = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return True
    pid = int(pid_text)
    if not 0 < pid <= PID_MAX:  # pid 0 would ask about this process group; a larger one cannot run
        return False
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
    which a local socket or tcp:// host never uses (paramiko is installed only with
    ``faice[docker-ssh]``; faice's own ssh connector uses asyncssh).
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
    pull: str = "missing",
    account_logins: bool = True,
    private_images: PrivateImages | None = None,
    on_progress: Callable[[str], None] | None = None,
    on_note: Callable[[str], None] | None = None,
) -> tuple[ImageInfo, bool]:
    """The image by the pull policy: ``missing`` pulls only an absent image, ``always`` pulls
    every time (and notes a tag that moved), ``never`` requires it to be present.

    On a host that runs other people's batches (an agency): ``account_logins=False`` never
    sends docker's stored logins of this account (``~/.docker/config.json``, credential
    helpers) — a pull carries the batch's own credentials or none; ``private_images`` records
    the images pulled with a batch's credentials, and such an image runs for a later batch
    only once its registry accepts that batch's own credentials for it.

    Returns (info, pulled); info holds the id and digest of the image that will run."""
    import docker

    bad_ref = check_image_ref(ref)
    if bad_ref:
        raise EngineError(f"container.settings.image.url: {bad_ref}")
    credentials = _registry_credentials(auth)
    if credentials is None and not account_logins:
        credentials = {}  # anonymous: docker-py would otherwise send the account's logins
    with private_images.locked() if private_images is not None else contextlib.nullcontext():
        before = None
        try:
            before = client.images.get(ref)
        except docker.errors.ImageNotFound:
            if pull == "never":
                raise EngineError(
                    f"container.settings.image.url: image {ref!r} is not present and pulling is off "
                    "(--pull never / --disable-pull)",
                    hint=f"pull or build it first (docker pull {ref}), or run with --pull missing",
                ) from None
        except docker.errors.APIError as exc:
            raise EngineError(f"container.settings.image.url: cannot inspect image {ref!r}: {exc.explanation}") from None
        image = before
        pulled = False
        if before is None or pull == "always":
            image = _pull(client, ref, credentials, on_progress)
            pulled = True
            if private_images is not None and credentials:
                private_images.add(image.id)
        elif private_images is not None and private_images.holds(before.id):
            _check_registry_access(client, ref, before.attrs.get("RepoDigests") or [], credentials)
    assert image is not None
    moved_from = None
    if pulled and before is not None and image.id != before.id:
        moved_from = before.id
        if on_note:
            on_note(f"image {ref} moved: was {before.id}, now {image.id}")
    user = ((image.attrs.get("Config") or {}).get("User")) or ""
    digest = repo_digest(ref, image.attrs.get("RepoDigests") or [])
    return ImageInfo(ref, image.id, digest, user, moved_from), pulled


def _registry_credentials(auth: dict[str, Any] | None) -> dict[str, Any] | None:
    """docker's ``auth_config`` for a RED file's ``image.auth`` (None: it gives none)."""
    if not auth:
        return None
    return {"username": auth.get("username", auth.get("_username")),
            "password": auth.get("password", auth.get("_password"))}


def _check_registry_access(client, ref: str, repo_digests: list[str], credentials: dict[str, Any] | None) -> None:
    """Ask the registry a privately pulled image came from whether ``credentials`` may read
    it (a manifest request, nothing is downloaded)."""
    import docker

    source = repo_digest(ref, repo_digests)
    if source is None:  # a pulled image always has a registry digest: refuse rather than lend
        raise EngineError(f"container.settings.image.url: image {ref!r} was pulled with another batch's "
                          "credentials and its registry is unknown; it is not lent")
    secret = (credentials or {}).get("password")
    try:
        client.api.inspect_distribution(source, auth_config=credentials)
    except docker.errors.APIError as exc:
        raise EngineError(_masked(
            secret, f"container.settings.image.url: image {ref!r} came from a registry that does not let this "
            f"batch's credentials (container.settings.image.auth) read it: {exc.explanation}",
        ), hint="give container.settings.image.auth with credentials the registry accepts for this image") from None


def repo_digest(ref: str, digests: list[str]) -> str | None:
    """The ``name@sha256:…`` of ``ref``'s own repository (an image tagged in several
    repositories has one digest per repository); the first one when none matches."""
    repository = _split_ref(ref)[0].split("@")[0]
    short = repository.removeprefix("docker.io/").removeprefix("library/")
    for digest in digests:
        name = digest.split("@")[0]
        if name in (repository, short) or name.removeprefix("docker.io/").removeprefix("library/") == short:
            return digest
    return digests[0] if digests else None


def _masked(secret: Any, text: str) -> str:
    """``text`` without the registry password (and the process's own secrets)."""
    if secret:
        text = text.replace(str(secret), MASK)
    return REDACTOR.redact(text)


def _pull(client, ref: str, credentials: dict[str, Any] | None, on_progress: Callable[[str], None] | None):
    """``credentials`` None: docker-py's choice (the account's stored logins); a mapping
    (``{}`` = anonymous) is sent as it is. The password is masked here rather than registered
    with the process's redactor (on an agency, that must never hold a user's password)."""
    import docker

    repository, tag = _split_ref(ref)
    secret = (credentials or {}).get("password")
    try:
        last = ""
        for event in client.api.pull(repository, tag=tag, stream=True, decode=True, auth_config=credentials):
            if "error" in event:
                raise EngineError(_masked(secret, f"container.settings.image.url: pulling {ref!r} failed: {event['error']}"))
            status = " ".join(str(event.get(k, "")) for k in ("id", "status", "progress")).strip()
            if on_progress and status and status != last:
                on_progress(status)
                last = status
        return client.images.get(ref)
    except docker.errors.APIError as exc:
        raise EngineError(_masked(secret, f"container.settings.image.url: pulling {ref!r} failed: {exc.explanation}")) from None


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


def create_kwargs(api: Any, spec: ContainerSpec) -> dict[str, Any]:
    """``APIClient.create_container`` keyword arguments: faice's labels, binds, limits and devices."""
    docker = import_docker()
    host_config: dict[str, Any] = {
        "binds": [f"{host}:{target}:{mode}" for host, target, mode in spec.binds],
        "ulimits": [docker.types.Ulimit(name="nofile", soft=4096, hard=4096)],
        # An init process as PID 1 (docker run --init): the kernel ignores SIGTERM sent to a
        # PID 1 without a handler (``sh -c``, ``python3``), so a stop waited out the grace.
        "init": True,
    }
    if spec.ram_mb:
        host_config["mem_limit"] = host_config["memswap_limit"] = f"{int(spec.ram_mb)}m"
    if spec.gpu_ids:
        host_config["device_requests"] = [
            docker.types.DeviceRequest(driver="nvidia", device_ids=list(spec.gpu_ids), capabilities=[["gpu"]])
        ]
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
        "environment": dict(spec.environment),
        "detach": True,
        "host_config": api.create_host_config(**host_config),
    }
    if spec.name:
        kwargs["name"] = spec.name
    if spec.user is not None:
        kwargs["user"] = spec.user
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


ARCHIVE_CHUNK = 1 << 20


class _ChunkReader(io.RawIOBase):
    """Docker's archive chunks as a readable stream (``tarfile`` reads it in ``r|`` mode)."""

    def __init__(self, chunks: Iterator[bytes]):
        self._chunks = iter(chunks)
        self._left = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._left:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._left = memoryview(chunk)
        count = min(len(buffer), len(self._left))
        buffer[:count] = self._left[:count]
        self._left = self._left[count:]
        return count


class DockerRuntime:
    name = "docker"
    """The containers of this process on one Docker engine; every exit path can remove them.

    A batch's container costs five calls to the engine (create, attach, start, wait,
    remove), made with docker-py's low-level API: the high-level one inspects the container
    again after creating it and before every log read, which on a sweep of trivial batches
    is most of the engine's work."""

    def __init__(self, client: Any, owner: tuple[int, int] | None = None) -> None:
        self.client = client
        self.api = client.api
        self.owner = owner or (os.geteuid(), os.getegid())  # who gets the files back (reclaim)
        self._lock = threading.Lock()
        self._live: dict[str, ContainerHandle] = {}

    @classmethod
    def connect(cls) -> DockerRuntime:
        return cls(connect())

    def ensure_image(self, ref: str, *, auth: dict | None = None, pull: str = "missing", account_logins: bool = True,
                     private_images: PrivateImages | None = None,
                     on_progress: Callable[[str], None] | None = None,
                     on_note: Callable[[str], None] | None = None) -> tuple[ImageInfo, bool]:
        return ensure_image(self.client, ref, auth=auth, pull=pull, account_logins=account_logins,
                            private_images=private_images, on_progress=on_progress, on_note=on_note)

    def remove_leftovers(self) -> list[str]:
        return remove_leftovers(self.client)

    def remove_batch(self, batch_id: str) -> list[str]:
        """Batch ``batch_id``'s containers (by label), whichever faice created them."""
        return remove_batch_containers(batch_id, self.client)

    def create(self, spec: ContainerSpec) -> ContainerHandle:
        from faice.runtime.cmdline import check_spec

        check_spec(spec)  # binds are "host:container:mode" strings to Docker too
        with docker_errors():
            created = self.api.create_container(**create_kwargs(self.api, spec))
        handle = ContainerHandle(created["Id"], spec.name or created["Id"][:12])
        with self._lock:
            self._live[handle.id] = handle
        return handle

    def attach(self, handle: ContainerHandle) -> Iterator[tuple[str, bytes]]:
        """Attached when this returns (call it before :meth:`start`, like ``docker run``):
        the iterator yields every ``(stream, chunk)`` the command writes and ends when it exits."""
        with docker_errors():
            frames = self.api.attach(handle.id, stdout=True, stderr=True, stream=True, demux=True)

        def chunks() -> Iterator[tuple[str, bytes]]:
            try:
                with docker_errors():
                    for stdout, stderr in frames:
                        if stdout:
                            yield "stdout", stdout
                        if stderr:
                            yield "stderr", stderr
            finally:
                frames.close()

        return chunks()

    def start(self, handle: ContainerHandle) -> None:
        try:
            with docker_errors():
                self.api.start(handle.id)
        except ContainerError as exc:
            code = not_runnable_code(exc.message)
            if code is None:
                raise
            raise CommandNotRunnable(exc.message, code) from None

    def wait(self, handle: ContainerHandle, timeout: float) -> int | None:
        import requests

        with docker_errors():
            try:
                result = self.api.wait(handle.id, timeout=timeout)
            except requests.exceptions.ConnectionError:  # docker-py's read timeout
                return None
        return int(result.get("StatusCode", -1))

    def stop(self, handle: ContainerHandle, grace: float) -> None:
        with docker_errors():
            self.api.stop(handle.id, timeout=int(grace))

    def kill(self, handle: ContainerHandle) -> None:
        with docker_errors():
            self.api.kill(handle.id)

    def exit_state(self, handle: ContainerHandle) -> ContainerExit:
        with docker_errors():
            state = self.api.inspect_container(handle.id).get("State") or {}
        return ContainerExit(int(state.get("ExitCode", -1)), bool(state.get("OOMKilled")))

    def logs(self, handle: ContainerHandle, stream: str) -> Iterator[bytes]:
        with docker_errors():
            yield from self.api.logs(handle.id, stdout=stream == "stdout", stderr=stream == "stderr", stream=True)

    def remove(self, handle: ContainerHandle) -> None:
        docker = import_docker()
        with self._lock:
            self._live.pop(handle.id, None)
        try:
            with docker_errors():
                self.api.remove_container(handle.id, force=True, v=True)
        except ContainerError as exc:
            if "already in progress" not in str(exc) and "No such container" not in str(exc):
                raise
        except docker.errors.NotFound:
            pass

    def forget(self, handle: ContainerHandle) -> None:
        with self._lock:
            self._live.pop(handle.id, None)

    def owns_process(self, pid: int) -> bool:
        """Whether host process ``pid`` runs in a container of this runtime (its cgroup names
        the container: ``docker-<id>.scope`` or ``/docker/<id>``). What cannot be read is not ours."""
        try:
            with open(f"/proc/{int(pid)}/cgroup", encoding="utf-8", errors="replace") as handle:
                groups = handle.read(65536)
        except (OSError, ValueError):
            return False
        with self._lock:
            live = list(self._live)
        return any(container_id in groups for container_id in live)

    def has_live(self) -> bool:
        with self._lock:
            return bool(self._live)

    def kill_all(self) -> None:
        """Kill and remove every container still registered (second Ctrl-C, final cleanup)."""
        with self._lock:
            live = list(self._live.values())
        for handle in live:
            try:
                self.remove(handle)
            except Exception:
                pass

    def reclaim(self, path: Path, image: str, run_id: str) -> None:
        """Give files the image's user wrote back to the user running faice.

        As root this is a chown on the host. Otherwise Docker's own archive API does it, and
        no tool of the user's image runs (an image may have no ``chown``, or a broken one): a
        container of the image is created but never started, the daemon reads the foreign
        files out of the bind mount as a tar and writes them back with the caller's uid/gid.
        Running the batch as the caller instead (``--user``) would break images whose tools
        need root or their own user. Raises :class:`ContainerError` when files stay foreign."""
        path = Path(path)
        if not path.exists():
            return
        uid, gid = self.owner
        foreign = _foreign(path, uid)
        if foreign and uid == 0:
            take_back(path, self.owner)
        elif foreign:
            self._reclaim_through_archive(path, image, run_id, uid, gid)
            left = _foreign(path, uid)
            if left:
                raise ContainerError(f"could not take back ownership of {len(left)} file(s) under {path}, "
                                     f"e.g. {left[0]}")
        if path.name == "outputs":
            os.chmod(path, 0o755)

    def _reclaim_through_archive(self, path: Path, image: str, run_id: str, uid: int, gid: int) -> None:
        """Stream the foreign files out of one never-started container and back in through a
        second one, rewritten with ``uid``/``gid``: one pass, no copy on disk, memory bounded by
        a pipe (Docker holds a container's lock while an archive of it is read, so the second
        container is what lets the two transfers run at once)."""
        import tarfile

        spec = ContainerSpec(image=image, command=["/faice-never-started"], run_id=run_id, batch_id="reclaim",
                             binds=[(str(path.resolve()), "/cc/reclaim", "rw")], workdir="/")
        handles = [self.create(spec)]
        read_fd, write_fd = os.pipe()
        pipe = os.fdopen(read_fd, "rb")
        failed: list[BaseException] = []

        def rewrite() -> None:
            try:
                with os.fdopen(write_fd, "wb") as sink, docker_errors():
                    stream, _stat = self.api.get_archive(handles[0].id, "/cc/reclaim")
                    with tarfile.open(fileobj=io.BufferedReader(_ChunkReader(stream), ARCHIVE_CHUNK), mode="r|") as source, \
                            tarfile.open(fileobj=sink, mode="w|") as out:
                        for member in source:
                            if member.uid == uid and member.gid == gid:
                                continue
                            member.uid, member.gid, member.uname, member.gname = uid, gid, "", ""
                            out.addfile(member, source.extractfile(member) if member.isfile() else None)
            except BaseException as exc:  # raised in the caller's thread, after the upload
                failed.append(exc)

        def body() -> Iterator[bytes]:
            while chunk := pipe.read(ARCHIVE_CHUNK):
                yield chunk
            worker.join()
            if failed:
                raise failed[0]

        worker = threading.Thread(target=rewrite, name=f"faice-reclaim-{run_id}", daemon=True)
        try:
            handles.append(self.create(spec))
            worker.start()
            with docker_errors():
                written = self.api.put_archive(handles[1].id, "/cc", body())
            if failed:
                raise failed[0]
            if not written:
                raise ContainerError(f"Docker refused to write {path} back with uid {uid}")
        finally:
            pipe.close()  # a writer still going gets EPIPE and ends
            if worker.ident is None:
                os.close(write_fd)
            worker.join()
            for handle in handles:
                self.remove(handle)

    def close(self) -> None:
        if not self.has_live():
            try:
                self.client.close()
            except Exception:
                pass


def not_runnable_code(message: str) -> int | None:
    """127 or 126 when the OCI runtime's start error says the command is missing or not
    executable (what a shell would exit with), else None."""
    if "exec:" not in message:
        return None
    if "executable file not found" in message or "no such file or directory" in message:
        return 127
    if "permission denied" in message:
        return 126
    return None


def take_back(path: Path, owner: tuple[int, int]) -> None:
    """As root: every file under ``path`` that another uid wrote is chowned to ``owner``
    (raises :class:`ContainerError` for those that stay foreign); ``outputs`` back to 0755."""
    if not path.exists():
        return
    uid, gid = owner
    failed = []
    for full in _foreign(path, uid) if uid == 0 else []:
        try:
            os.lchown(full, uid, gid)
        except OSError as exc:
            failed.append(f"{full}: {exc.strerror}")
    if failed:
        raise ContainerError(f"could not take back ownership of {len(failed)} file(s): {failed[0]}")
    if path.name == "outputs":
        os.chmod(path, 0o755)


def _foreign(path: Path, uid: int) -> list[str]:
    """Every path under ``path`` (itself included) not owned by ``uid``."""
    found = []
    for root, dirs, files in os.walk(path):
        for name in [*dirs, *files, ""]:
            full = os.path.join(root, name) if name else root
            try:
                if os.lstat(full).st_uid != uid:
                    found.append(full)
            except OSError:
                pass
    return found


def remove_batch_containers(batch_id: str, client: Any) -> list[str]:
    """Remove every container of one batch (an agency batch whose server stopped mid-run)."""
    docker = import_docker()
    removed = []
    for container in client.containers.list(all=True, filters={"label": f"{LABEL_BATCH}={batch_id}"},
                                            ignore_removed=True):
        try:
            container.remove(force=True)
            removed.append(container.name)
        except docker.errors.NotFound:
            pass  # gone between listing and removing
    return removed
