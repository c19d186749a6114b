"""One logged-in asyncssh SFTP session per account, shared by every check and transfer.

Remote paths go to the server as SFTP path strings, so nothing globs them (``run[1].h5`` is
that file) or splits them at spaces, and no child process could outlive faice or show a
secret in ``ps``: the password or key stays in this process's memory.

One event loop thread per connector holds the sessions; :class:`RemoteFiles` is the
blocking face the connector uses. A caller interrupted while it waits (Ctrl-C) cancels its
operation before the exception goes on.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from faice.connectors import Progress
from faice_connectors.ssh import access as settings

# Parallel SFTP reads/writes in flight. 32 blocks of up to 255 KiB already outrun the SSH
# channel window (2 MiB); more only lengthen asyncio's wait over pending requests: 1 GiB
# received from the test sshd took about 10 % less wall and CPU time than with 128.
SFTP_MAX_REQUESTS = 32


class _Stopped(Exception):
    """Carries an exception raised by a progress callback out of the event loop thread."""

    def __init__(self, original: BaseException) -> None:
        super().__init__(str(original))
        self.original = original


def _fast_ciphers() -> list[str]:
    """asyncssh's defaults with AES-GCM first: AES-NI in OpenSSL on both ends, where its
    ChaCha20-Poly1305 costs this process about 1.7x the CPU per byte."""
    from asyncssh.encryption import get_default_encryption_algs

    names = [alg.decode() for alg in get_default_encryption_algs()]
    return sorted(names, key=lambda name: (not name.startswith("aes128-gcm"), not name.endswith("-gcm@openssh.com")))


class SftpSessions:
    """The connector's event loop and its sessions, one login per account."""

    def __init__(self, timeout: float | None) -> None:
        self.timeout = float(timeout or 120)
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._sessions: dict[tuple, tuple[Any, Any]] = {}
        self._opening: dict[tuple, threading.Lock] = {}

    def run(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        """Run ``coroutine`` on the loop thread and wait for its result."""
        with self._lock:
            if self._loop is None:
                logging.getLogger("asyncssh").setLevel(logging.WARNING)  # not a line per connection
                self._loop = asyncio.new_event_loop()
                self._thread = threading.Thread(target=self._loop.run_forever, name="faice-ssh", daemon=True)
                self._thread.start()
            loop = self._loop
        future = asyncio.run_coroutine_threadsafe(coroutine, loop)
        try:
            return future.result()
        except _Stopped as stopped:
            raise stopped.original from None
        except BaseException:
            if not future.done():
                future.cancel()  # Ctrl-C or similar in this thread: stop the operation too
                concurrent.futures.wait([future], timeout=10)
            raise

    def files(self, access) -> RemoteFiles:
        """The account's files; logs in now (errors surface before any transfer) unless a
        live session of the same account exists."""
        key = settings.account_key(access)
        with self._lock:
            opening = self._opening.setdefault(key, threading.Lock())
        with opening:  # one login per account, also when several threads start at once
            with self._lock:
                found = self._sessions.get(key)
            if found is None or found[0].is_closed():
                found = self.run(self._open(access))
                with self._lock:
                    old, self._sessions[key] = self._sessions.get(key), found
                if old is not None and self._loop is not None:  # a dead session: nothing uses it
                    self._loop.call_soon_threadsafe(old[0].abort)
        return RemoteFiles(self, access, found[1])

    async def _open(self, access) -> tuple[Any, Any]:
        import asyncssh

        settings.check_access_values(access)
        auth = access["auth"]
        known = settings.load_known_hosts(access)
        client = settings.client_factory(access, known)
        timeout = float(access.get("timeout", self.timeout))
        options: dict[str, Any] = {
            "host": access["host"], "port": settings.port(access), "username": auth["username"],
            "config": [], "agent_path": None, "known_hosts": known, "client_factory": client,
            "connect_timeout": timeout, "login_timeout": float(access.get("authTimeout", timeout)),
            "keepalive_interval": 15, "keepalive_count_max": 4, "encryption_algs": _fast_ciphers(),
        }
        if "password" in auth:
            options.update(password=auth["password"], client_keys=None,
                           preferred_auth="password,keyboard-interactive")
        else:
            options.update(client_keys=[settings.load_private_key(auth["privateKey"], auth.get("passphrase"))],
                           preferred_auth="publickey")
        try:
            conn = await asyncssh.connect(**options)
        except BaseException as exc:
            raise settings.mapped(exc, access, changed=client.changed) from None
        try:
            return conn, await conn.start_sftp_client()
        except BaseException as exc:
            conn.abort()
            raise settings.mapped(exc, access) from None

    def close(self) -> None:
        with self._lock:
            loop, self._loop = self._loop, None
            thread, self._thread = self._thread, None
            sessions, self._sessions = list(self._sessions.values()), {}
        if loop is None:
            return

        async def shut() -> None:
            for conn, _sftp in sessions:
                conn.close()
            for conn, _sftp in sessions:
                try:
                    await asyncio.wait_for(conn.wait_closed(), 5)
                except BaseException:
                    pass

        try:
            asyncio.run_coroutine_threadsafe(shut(), loop).result(timeout=15)
        except BaseException:
            pass
        loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(timeout=15)
        if not loop.is_running():
            loop.close()


class RemoteFiles:
    """Blocking SFTP calls on one account's session. Missing paths raise
    :class:`FileNotFoundError`, refused ones :class:`PermissionError` (the walkers decide
    what they mean); every other failure is already a connector failure."""

    def __init__(self, sessions: SftpSessions, access, sftp) -> None:
        self.sessions = sessions
        self.access = access
        self.sftp = sftp

    def _call(self, coroutine: Coroutine[Any, Any, Any], path: str) -> Any:
        import asyncssh

        async def guarded() -> Any:
            try:
                return await coroutine
            except asyncssh.SFTPNoSuchFile:
                raise FileNotFoundError(2, "no such file", path) from None
            except asyncssh.SFTPPermissionDenied:
                raise PermissionError(13, "permission denied", path) from None
            except asyncssh.SFTPFailure as exc:
                raise OSError(None, exc.reason, path) from None
            except (asyncio.CancelledError, OSError):
                raise
            except BaseException as exc:
                raise settings.mapped(exc, self.access) from None

        return self.sessions.run(guarded())

    def stat(self, path: str):
        return self._call(self.sftp.stat(path), path)

    def lstat(self, path: str):
        return self._call(self.sftp.lstat(path), path)

    def realpath(self, path: str) -> str:
        return self._call(self.sftp.realpath(path), path)

    def entries(self, path: str) -> list:
        """The directory's entries without ``.`` and ``..``, by name."""
        names = self._call(self.sftp.readdir(path), path)
        return sorted((e for e in names if e.filename not in (".", "..")), key=lambda e: e.filename)

    def mkdir(self, path: str) -> None:
        self._call(self.sftp.mkdir(path), path)

    def remove(self, path: str) -> None:
        self._call(self.sftp.remove(path), path)

    def replace(self, src: str, dst: str) -> None:
        """``src`` becomes ``dst`` atomically (OpenSSH's posix-rename)."""
        self._call(self.sftp.posix_rename(src, dst), dst)

    def get(self, remote: str, local: Path, progress: Progress) -> None:
        self._copy("get", remote.encode(), str(local), progress)

    def put(self, local: Path, remote: str, progress: Progress) -> None:
        self._copy("put", str(local), remote.encode(), progress)

    def _copy(self, direction: str, src, dst, progress: Progress) -> None:
        seen = [0]

        def handler(_src, _dst, done: int, _total: int) -> None:
            if done > seen[0]:
                try:
                    progress.advance(done - seen[0])
                except BaseException as exc:  # e.g. a cancel raised by the caller's callback
                    raise _Stopped(exc) from None
                seen[0] = done

        async def copy() -> None:
            copy_file = self.sftp.get if direction == "get" else self.sftp.put
            try:
                await copy_file(src, dst, max_requests=SFTP_MAX_REQUESTS, follow_symlinks=True,
                                progress_handler=handler)
            except (_Stopped, asyncio.CancelledError):
                raise
            except BaseException as exc:
                raise settings.mapped(exc, self.access) from None

        self.sessions.run(copy())
