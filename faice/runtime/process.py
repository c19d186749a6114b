"""Container runtimes driven through their command lines: a batch is one process group.

Apptainer, Enroot and Charliecloud have no daemon; Podman has one only optionally. For all of
them a batch's container is the runtime program faice starts, in its own session: its output
comes through two pipes, its end is its exit status, cancelling it signals its group, and the
kernel kills it when faice dies (``setpriv --pdeathsig``). :class:`ProcessRuntime` is that
supervision; a runtime adds what differs:

* :meth:`ProcessRuntime.command` — the exact argv and environment of one batch (the
  environment carries every value that may be secret: no value ever sits on a command line);
* :meth:`ProcessRuntime.find_image` / :meth:`ProcessRuntime.fetch_image` — the image once
  per host, under a lock (:func:`image_lock`) shared by every faice process on it;
* :meth:`ProcessRuntime.runtime_error` — the runtime's own failures, told from the command's.

The memory limit and the OOM class come from :mod:`faice.runtime.cgroups` where faice may
create cgroups; :meth:`ProcessRuntime.memory_note` says plainly where it may not.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import selectors
import shutil
import signal
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from faice.errors import EngineError
from faice.runtime.cgroups import MemoryCgroup, can_limit_memory, remove_stale_cgroups
from faice.runtime.cmdline import check_spec
from faice.runtime.containers import (
    ContainerError,
    ContainerExit,
    ContainerHandle,
    ContainerSpec,
    ImageInfo,
    check_image_ref,
)
from faice.runtime.private_images import PrivateImages

STDERR_TAIL = 4000  # bytes of the runtime's stderr kept for its error messages
IMAGE_CACHE_VARIABLE = "FAICE_IMAGE_CACHE"


@dataclass
class RuntimeCommand:
    """One batch's runtime program: its argv and its whole environment."""

    argv: list[str]
    env: dict[str, str]


@dataclass
class _Batch:
    spec: ContainerSpec
    command: RuntimeCommand
    cgroup: MemoryCgroup | None
    process: subprocess.Popen | None = None
    started: threading.Event = field(default_factory=threading.Event)
    stderr_tail: bytearray = field(default_factory=bytearray)
    signalled: bool = False  # faice stopped or killed it
    cwd: str | None = None  # the program's own working directory (conmon writes an ``oom`` file there)


def image_cache(runtime: str) -> Path:
    """Where converted images live: ``$FAICE_IMAGE_CACHE/<runtime>`` (a shared directory on a
    cluster), else the user's ``~/.cache/faice/images/<runtime>``."""
    configured = os.environ.get(IMAGE_CACHE_VARIABLE)
    if configured:
        return Path(configured) / runtime
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "faice" / "images" / runtime


def image_key(ref: str) -> str:
    """A file name for ``ref``: readable, and unique by its hash."""
    readable = "".join(c if c.isalnum() or c in "._-" else "_" for c in ref)[:80]
    return f"{readable}-{hashlib.sha256(ref.encode()).hexdigest()[:12]}"


@contextlib.contextmanager
def image_lock(cache: Path, ref: str) -> Iterator[None]:
    """Held while one process fetches or converts ``ref``: every other faice process on the
    host (Slurm workers, concurrent runs) waits, then finds the image ready."""
    locks = cache / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    with open(locks / f"{image_key(ref)}.lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def groups_dir() -> Path:
    """Where each running batch's process group is noted with its owner (``<pgid>`` files), so
    the next faice start can end the groups of a faice that was SIGKILLed: the kernel kills
    the runtime program with it (``--pdeathsig``), not what that program started."""
    import tempfile

    return Path(tempfile.gettempdir()) / f"faice-groups-{os.geteuid()}"


def note_group(pgid: int, batch_id: str = "") -> None:
    """Note a batch's process group: its faice (owner token) and its batch id."""
    from faice.runtime.docker import owner_token

    directory = groups_dir()
    directory.mkdir(mode=0o700, exist_ok=True)
    if directory.is_symlink() or directory.stat().st_uid != os.geteuid():
        return  # not ours: never write into another user's directory
    (directory / str(pgid)).write_text(f"{owner_token()}\n{batch_id}\n")


def forget_group(pgid: int) -> None:
    with contextlib.suppress(OSError):
        (groups_dir() / str(pgid)).unlink()


def _noted_groups() -> Iterator[tuple[Path, str, str]]:
    """Each noted group: its note, its owner token, its batch id."""
    directory = groups_dir()
    if not directory.is_dir() or directory.is_symlink() or directory.stat().st_uid != os.geteuid():
        return
    for entry in directory.iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            owner, _, batch = entry.read_text().partition("\n")
            yield entry, owner.strip(), batch.strip()


def _end_group(entry: Path) -> str | None:
    ended = None
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(int(entry.name), signal.SIGKILL)
        ended = f"process group {entry.name}"
    with contextlib.suppress(OSError):
        entry.unlink()
    return ended


def end_orphaned_groups() -> list[str]:
    """Kill the process groups noted by faice processes that no longer run."""
    from faice.runtime.docker import owner_alive

    ended = [_end_group(entry) for entry, owner, _batch in _noted_groups() if not owner_alive(owner)]
    return [e for e in ended if e]


def end_batch_groups(batch_id: str) -> list[str]:
    """Kill the process groups noted for batch ``batch_id`` (an agency batch whose server
    stopped mid-run), whichever faice process started them."""
    ended = [_end_group(entry) for entry, _owner, batch in _noted_groups() if batch and batch == batch_id]
    return [e for e in ended if e]


def die_with_faice() -> list[str]:
    """The prefix that makes the runtime program receive SIGKILL when faice dies."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--"] if setpriv else []


def program_environment(*names: str) -> dict[str, str]:
    """The runtime program's own variables from faice's environment (PATH to find helpers,
    the runtime's configuration variables), nothing else."""
    keep = {"PATH", "HOME", "USER", "LOGNAME", "LANG", "TMPDIR", "XDG_RUNTIME_DIR", *names}
    found = {k: v for k, v in os.environ.items() if k in keep or any(k.startswith(p) for p in names if p.endswith("_"))}
    if "USER" not in found:
        import pwd

        with contextlib.suppress(KeyError):
            found["USER"] = pwd.getpwuid(os.geteuid()).pw_name
    return found


class ProcessRuntime:
    """Supervises one process group per batch; see the module docstring."""

    name = "process"
    program = ""
    faice_moves_pid = True  # put the started process into the batch's cgroup (no runtime cgroup of its own)

    def __init__(self, cache: Path | None = None, owner: tuple[int, int] | None = None) -> None:
        self.cache = cache or image_cache(self.name)
        self.owner = owner or (os.geteuid(), os.getegid())
        self.account_logins = True  # may the account's stored registry logins serve a pull (not on an agency)
        self._lock = threading.Lock()
        self._live: dict[str, _Batch] = {}

    # ------------------------------------------------------------------ per runtime

    def command(self, spec: ContainerSpec, cgroup: MemoryCgroup | None) -> RuntimeCommand:
        raise NotImplementedError

    def image_path(self, ref: str) -> str:
        """What the runtime's command names for ``ref`` once prepared (a cached file, or ``ref``)."""
        return ref

    def find_image(self, ref: str) -> ImageInfo | None:
        """The prepared image on this host, or None."""
        raise NotImplementedError

    def fetch_image(self, ref: str, auth: dict | None) -> ImageInfo:
        """Fetch (and convert) ``ref``; called under :func:`image_lock`."""
        raise NotImplementedError

    def runtime_error(self, code: int, stderr: str) -> str | None:
        """The runtime's own failure (not the command's), or None."""
        return None

    def batch_cgroup(self, name: str, spec: ContainerSpec) -> MemoryCgroup | None:
        """The batch's memory cgroup of faice's (where faice may make one and ``ram`` is set)."""
        return MemoryCgroup.create(name, spec.ram_mb) if spec.ram_mb else None

    def memory_note(self) -> str | None:
        """Why ``ram`` cannot be enforced here, or None when it is."""
        return None if can_limit_memory() else (
            f"{self.name}: container.settings.ram is not enforced here: faice may not create memory "
            "cgroups (not root, no delegated cgroup v2); the cluster's own limits (Slurm's cgroup) apply")

    # ------------------------------------------------------------------ images

    def ensure_image(self, ref: str, *, auth: dict | None = None, pull: str = "missing", account_logins: bool = True,
                     private_images: PrivateImages | None = None,
                     on_progress: Callable[[str], None] | None = None,
                     on_note: Callable[[str], None] | None = None) -> tuple[ImageInfo, bool]:
        """As Docker's: on an agency (``private_images`` given) an image once fetched with
        credentials is fetched again for every batch with the batch's own (or none), so the
        registry, not the cache, decides whether the batch may have it."""
        bad_ref = check_image_ref(ref)
        if bad_ref:
            raise EngineError(f"container.settings.image.url: {bad_ref}")
        self.account_logins = account_logins
        private = self.cache / "private" / image_key(ref)
        with image_lock(self.cache, ref):
            before = self.find_image(ref)
            ask_registry = private_images is not None and (bool(auth) or private.exists())
            if before is not None and pull != "always" and not ask_registry:
                return before, False
            if before is None and pull == "never":
                raise EngineError(
                    f"container.settings.image.url: image {ref!r} is not prepared for {self.name} on this "
                    "host and pulling is off (--pull never / --disable-pull)",
                    hint="run once with --pull missing", )
            if on_progress:
                on_progress(f"{self.name}: fetching {ref}")
            info = self.fetch_image(ref, auth)
            if private_images is not None and auth:
                private.parent.mkdir(parents=True, exist_ok=True)
                private.touch()
            elif private_images is not None:
                private.unlink(missing_ok=True)
        if before is not None and before.id != info.id:
            info.moved_from = before.id
            if on_note:
                on_note(f"image {ref} moved: was {before.id}, now {info.id}")
        return info, True

    def run_program(self, argv: list[str], *, env: dict[str, str] | None = None, timeout: float = 3600,
                    secret: str | None = None) -> str:
        """A runtime's helper call (pull, convert, inspect): its stdout, or an EngineError with
        its stderr (``secret`` masked)."""
        try:
            result = subprocess.run([*die_with_faice(), *argv], env=env, stdin=subprocess.DEVNULL,
                                    capture_output=True, text=True, errors="replace", timeout=timeout)
        except FileNotFoundError:
            raise EngineError(f"{argv[0]} is not installed on this host (container.engine {self.name})") from None
        except subprocess.TimeoutExpired:
            raise EngineError(f"{argv[0]} {argv[1] if len(argv) > 1 else ''} did not finish within {timeout:g} s") from None
        if result.returncode != 0:
            text = (result.stderr.strip() or result.stdout.strip())[-1500:]
            if secret:
                text = text.replace(secret, "********")
            raise EngineError(f"{' '.join(argv[:2])} failed (exit code {result.returncode}): {text}")
        return result.stdout

    # ------------------------------------------------------------------ containers

    def describe(self, spec: ContainerSpec) -> RuntimeCommand:
        """The command :meth:`create` would run for ``spec`` (``--dry-run``)."""
        check_spec(spec)
        cgroup = None
        if spec.ram_mb and can_limit_memory():
            cgroup = MemoryCgroup(Path("/"), f"/faice/{spec.name or 'BATCH'}", 0, int(spec.ram_mb) * 2**20)
        return self.command(spec, cgroup)

    def create(self, spec: ContainerSpec) -> ContainerHandle:
        check_spec(spec)
        handle = ContainerHandle(uuid.uuid4().hex, spec.name or f"faice-{uuid.uuid4().hex[:12]}")
        cgroup = self.batch_cgroup(handle.name, spec)
        batch = _Batch(spec, self.command(spec, cgroup), cgroup)
        with self._lock:
            self._live[handle.id] = batch
        return handle

    def _batch(self, handle: ContainerHandle) -> _Batch:
        with self._lock:
            batch = self._live.get(handle.id)
        if batch is None:
            raise ContainerError(f"{self.name}: no such container {handle.name}")
        return batch

    def attach(self, handle: ContainerHandle) -> Iterator[tuple[str, bytes]]:
        batch = self._batch(handle)

        def chunks() -> Iterator[tuple[str, bytes]]:
            batch.started.wait()
            process = batch.process
            if process is None or process.stdout is None or process.stderr is None:
                return
            with selectors.DefaultSelector() as selector:
                selector.register(process.stdout, selectors.EVENT_READ, "stdout")
                selector.register(process.stderr, selectors.EVENT_READ, "stderr")
                while selector.get_map():
                    for key, _ in selector.select():
                        data = os.read(key.fd, 65536)
                        if not data:
                            selector.unregister(key.fileobj)
                            continue
                        if key.data == "stderr":
                            batch.stderr_tail += data
                            del batch.stderr_tail[:-STDERR_TAIL]
                        yield key.data, data

        return chunks()

    def start(self, handle: ContainerHandle) -> None:
        batch = self._batch(handle)
        import tempfile

        # Never the user's directory: Podman 4.3's conmon drops an ``oom`` file into its cwd.
        batch.cwd = tempfile.mkdtemp(prefix="faice-runtime-")
        try:
            batch.process = subprocess.Popen(
                [*die_with_faice(), *batch.command.argv], env=batch.command.env, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, close_fds=True,
                cwd=batch.cwd)
        except OSError as exc:
            batch.started.set()
            raise ContainerError(f"cannot run {batch.command.argv[0]} (container.engine {self.name}): "
                                 f"{exc.strerror or exc}") from None
        note_group(batch.process.pid, batch.spec.batch_id)
        if batch.cgroup is not None and self.faice_moves_pid:
            try:
                batch.cgroup.add(batch.process.pid)
            except OSError as exc:
                batch.started.set()
                self._end(batch, signal.SIGKILL)
                raise ContainerError(f"cannot put the batch into its memory cgroup: {exc.strerror}") from None
        batch.started.set()

    def wait(self, handle: ContainerHandle, timeout: float) -> int | None:
        process = self._batch(handle).process
        if process is None:
            return -1
        try:
            code = process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        return 128 - code if code < 0 else code

    def _end(self, batch: _Batch, sig: int) -> None:
        """Signal a batch that still runs; one that ended by itself stays not ``signalled``
        (Podman's ``--rm`` then removed its container: no ``podman rm`` after it)."""
        if batch.process is not None and batch.process.poll() is not None:
            return
        batch.signalled = True
        if batch.process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(batch.process.pid, sig)

    def stop(self, handle: ContainerHandle, grace: float) -> None:
        batch = self._batch(handle)
        batch.signalled = True  # faice ended it, even where the runtime's own stop came first
        self._end(batch, signal.SIGTERM)
        if batch.process is not None:
            try:
                batch.process.wait(grace)
            except subprocess.TimeoutExpired:
                self._end(batch, signal.SIGKILL)

    def kill(self, handle: ContainerHandle) -> None:
        batch = self._batch(handle)
        batch.signalled = True
        self._end(batch, signal.SIGKILL)

    def exit_state(self, handle: ContainerHandle) -> ContainerExit:
        batch = self._batch(handle)
        code = self.wait(handle, 30)
        code = -1 if code is None else code
        oom = batch.cgroup.oom_killed() if batch.cgroup is not None else self.oom_without_cgroup(batch, code)
        error = None if oom else self.runtime_error(code, batch.stderr_tail.decode("utf-8", "replace"))
        return ContainerExit(code, oom and code != 0, error)

    def oom_without_cgroup(self, batch: _Batch, code: int) -> bool:
        """No cgroup of faice's: killed by SIGKILL that faice did not send, under a RAM limit
        that the runtime enforces (Podman's ``--memory``), is the kernel's OOM killer."""
        return False

    def logs(self, handle: ContainerHandle, stream: str) -> Iterator[bytes]:
        """Everything came through :meth:`attach`; a process keeps no log to read again."""
        return iter(())

    def remove(self, handle: ContainerHandle) -> None:
        with self._lock:
            batch = self._live.pop(handle.id, None)
        if batch is None:
            return
        batch.started.set()  # an attach still waiting for a start that never came ends
        self._end(batch, signal.SIGKILL)
        if batch.process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(batch.process.pid, signal.SIGKILL)  # what the command left in its group
            forget_group(batch.process.pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                batch.process.wait(10)
            for pipe in (batch.process.stdout, batch.process.stderr):
                with contextlib.suppress(OSError):
                    if pipe is not None:
                        pipe.close()
        self.after_remove(handle, batch)
        if batch.cwd is not None:
            shutil.rmtree(batch.cwd, ignore_errors=True)
        if batch.cgroup is not None:
            batch.cgroup.remove()

    def after_remove(self, handle: ContainerHandle, batch: _Batch) -> None:
        """What the runtime leaves behind a finished process (Podman: a container)."""

    def forget(self, handle: ContainerHandle) -> None:
        with self._lock:
            self._live.pop(handle.id, None)

    def owns_process(self, pid: int) -> bool:
        """Whether host process ``pid`` is a batch's (its session is a runtime program faice
        started, or its cgroup is a batch's): its GPU memory is not someone else's."""
        try:
            with open(f"/proc/{int(pid)}/stat", encoding="utf-8", errors="replace") as handle:
                session = int(handle.read().rsplit(")", 1)[1].split()[3])
            with open(f"/proc/{int(pid)}/cgroup", encoding="utf-8", errors="replace") as handle:
                groups = handle.read(65536)
        except (OSError, ValueError, IndexError):
            return False
        with self._lock:
            batches = list(self._live.values())
        return any((b.process is not None and b.process.pid == session) or
                   (b.cgroup is not None and f"{b.cgroup.relative}/" in groups.replace("\n", "/\n")) for b in batches)

    def has_live(self) -> bool:
        with self._lock:
            return bool(self._live)

    def kill_all(self) -> None:
        with self._lock:
            handles = [ContainerHandle(key, batch.spec.name or key) for key, batch in self._live.items()]
        for handle in handles:
            with contextlib.suppress(Exception):
                self.remove(handle)

    def reclaim(self, path: Path, image: str, run_id: str) -> None:
        """Files an image's user wrote, given back: a chown as root (the runtimes that run the
        invoking user's own uid leave nothing foreign)."""
        from faice.runtime.docker import take_back

        take_back(Path(path), self.owner)

    def remove_leftovers(self) -> list[str]:
        """The process groups of batches whose faice was killed (SIGKILL), then the batch
        cgroups such a faice left (empty once its groups are gone)."""
        ended = end_orphaned_groups()
        return [*ended, *remove_stale_cgroups(settle_s=5.0 if ended else 0.0)]

    def remove_batch(self, batch_id: str) -> list[str]:
        """What batch ``batch_id`` left on this host, whichever faice ran it: its process groups."""
        return end_batch_groups(batch_id)

    def close(self) -> None:
        pass
