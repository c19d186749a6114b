"""``ssh`` (also ``red-connector-ssh``): SFTP transfers (asyncssh) and sshfs mounts on the host.

Access keys follow upstream red-connector-ssh (``host``, ``port``, ``auth`` {``username``,
``password`` | ``privateKey``, ``passphrase``}, ``filePath``/``dirPath``, ``writable``,
timeouts) plus host key checking that upstream lacked: ``hostKeyPolicy`` ``accept-new``
(default, like OpenSSH: an unknown key is recorded in ``knownHostsFile``, default faice's
own file, :attr:`HostIdentity.known_hosts` — never the account's ``~/.ssh/known_hosts``, so
on an agency no user decides a host's key for another through the server's account; a
changed key is refused), ``strict`` (the key must be known) or ``ignore``. Private keys may be ed25519, ECDSA or RSA, optionally with a passphrase.
Secrets stay in memory (transfers) or, for sshfs, in 0600 files in an owned scratch dir
removed right after the mount (or at the next start after a SIGKILL); never in argv.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import logging
import os
import posixpath
import re
import shutil
import stat
import subprocess
import threading
import warnings
from pathlib import Path

from cryptography.utils import CryptographyDeprecationWarning

from faice.connectors import (
    Connector,
    ConnectorFailure,
    Listing,
    Progress,
    TransientFailure,
    listed_dirs,
    listed_files,
    safe_relative,
)
from faice.connectors.scratch import private_dir, remove_dead_scratch
from faice.connectors.trees import output_tree
from faice_connectors._shared import strings_block

# asyncssh and paramiko still name DSA (and old ciphers) in type hints and tables, which the
# cryptography they run with deprecates: five warnings at import that no user can act on.
# Ignored for those two libraries only; faice's own use of cryptography still warns.
warnings.filterwarnings("ignore", category=CryptographyDeprecationWarning, module=r"(asyncssh|paramiko)(\.|$)")

# What a value may contain where it reaches ssh, sshfs or an ssh config file: no option
# separators (comma, backslash), quotes, control characters or ssh config expansions.
HOST_PATTERN = r"^(?!-)[A-Za-z0-9._:%-]+$"
USERNAME_PATTERN = r"^(?!-)[A-Za-z0-9._@$+-]+$"
LOCAL_PATH_PATTERN = r"^[^\x00-\x1f\x7f,\\\"%$]+$"
CIPHER_PATTERN = r"^[A-Za-z0-9@.+_-]+$"
CIPHERS_PATTERN = r"^[A-Za-z0-9@.+_-]+(,[A-Za-z0-9@.+_-]+)*$"
REMOTE_PATH_PATTERN = r"^[^\x00]+$"

_USERNAME = {"type": "string", "minLength": 1, "pattern": USERNAME_PATTERN}
_AUTH = {"oneOf": [strings_block(["username", "password"], username=_USERNAME),
                   strings_block(["username", "privateKey"], ["passphrase"], username=_USERNAME)]}
_COMMON = {
    "host": {"type": "string", "minLength": 1, "pattern": HOST_PATTERN},
    "port": {"type": "integer", "minimum": 1, "maximum": 65535},
    "auth": _AUTH,
    "timeout": {"type": "number"},
    "authTimeout": {"type": "number"},
    "bannerTimeout": {"type": "number"},
    "hostKeyPolicy": {"enum": ["accept-new", "strict", "ignore"]},
    "knownHostsFile": {"type": "string", "minLength": 1, "pattern": LOCAL_PATH_PATTERN},
}


def _schema(path_key: str, **extra) -> dict:
    return {
        "type": "object",
        "properties": {**_COMMON, path_key: {"type": "string", "minLength": 1, "pattern": REMOTE_PATH_PATTERN},
                       **extra},
        "required": ["host", "auth", path_key],
        "additionalProperties": False,
    }


def check_access_values(access) -> None:
    """The schema's patterns again where values are used: a caller that skipped the schema
    check still cannot put an option into an ssh or sshfs command line."""
    checks = [("host", access.get("host"), HOST_PATTERN),
              ("auth.username", (access.get("auth") or {}).get("username"), USERNAME_PATTERN),
              ("knownHostsFile", access.get("knownHostsFile"), LOCAL_PATH_PATTERN)]
    ciphers = access.get("ciphers")
    if isinstance(ciphers, list):
        checks += [(f"ciphers[{i}]", c, CIPHER_PATTERN) for i, c in enumerate(ciphers)]
    else:
        checks.append(("ciphers", ciphers, CIPHERS_PATTERN))
    for key in ("filePath", "dirPath"):
        checks.append((key, access.get(key), REMOTE_PATH_PATTERN))
    for key, value, pattern in checks:
        if value is not None and (not isinstance(value, str) or re.fullmatch(pattern, value) is None):
            raise ConnectorFailure(f"access.{key}: {value!r} is not allowed here (it must match {pattern})")


class SshConnector(Connector):
    """SFTP (paramiko) for transfers; sshfs on the host for ``mount: true``."""

    names = ("ssh", "red-connector-ssh")
    access_schema = {
        "receive-file": _schema("filePath"),
        "send-file": _schema("filePath"),
        "receive-dir": _schema("dirPath"),
        "send-dir": _schema("dirPath"),
        "mount-dir": _schema(
            "dirPath",
            writable={"type": "boolean"},
            ciphers={"anyOf": [{"type": "string", "pattern": CIPHERS_PATTERN},
                               {"type": "array", "items": {"type": "string", "pattern": CIPHER_PATTERN}}]},
        ),
    }

    def __init__(self, *, timeout: float | None = None) -> None:
        super().__init__(timeout=timeout)
        self._lock = threading.Lock()
        self._clients: dict[tuple, object] = {}
        self._mounts: dict[Path, bool] = {}  # mount point → writable
        self._sftp_pool = SftpPool(timeout)
        remove_dead_scratch()  # secrets a SIGKILLed run left for sshfs

    # ---------------------------------------------------------------- connections

    def _with_known_hosts(self, access):
        """``access`` with its host-key file: its own ``knownHostsFile``, else the host's
        (:attr:`HostIdentity.known_hosts`)."""
        if access.get("knownHostsFile"):
            return access
        return {**access, "knownHostsFile": str(self.identity.known_hosts_file())}

    def _client(self, access):
        """A logged-in paramiko client, shared by every transfer to the same account."""
        auth = access["auth"]
        key = (access["host"], access.get("port", 22), auth["username"], auth.get("password"),
               auth.get("privateKey"), auth.get("passphrase"), _policy(access), _known_hosts(access))
        with self._lock:
            client = self._clients.get(key)
            if client is not None and client.get_transport() is not None and client.get_transport().is_active():
                return client
            client = self._connect(access)
            self._clients[key] = client
            return client

    def _connect(self, access):
        import paramiko

        check_access_values(access)

        host, port = access["host"], int(access.get("port", 22))
        auth = access["auth"]
        policy, known_hosts = _policy(access), _known_hosts(access)
        client = paramiko.SSHClient()
        if policy == "ignore":
            client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        else:
            if known_hosts.is_file():
                try:
                    client.load_host_keys(str(known_hosts))
                except (OSError, paramiko.SSHException) as exc:
                    raise ConnectorFailure(f"cannot read knownHostsFile {known_hosts}: {exc}") from None
            if policy == "strict":
                client.set_missing_host_key_policy(paramiko.RejectPolicy())
            else:
                client.set_missing_host_key_policy(_RecordNewKey(known_hosts))
        kwargs = {
            "hostname": host, "port": port, "username": auth["username"],
            "timeout": float(access.get("timeout", self.timeout or 120)),
            "auth_timeout": float(access.get("authTimeout", self.timeout or 60)),
            "banner_timeout": float(access.get("bannerTimeout", self.timeout or 60)),
            "allow_agent": False, "look_for_keys": False,
        }
        if "password" in auth:
            kwargs["password"] = auth["password"]
        else:
            kwargs["pkey"] = load_private_key(auth["privateKey"], auth.get("passphrase"))
        where = f"{auth['username']}@{host}:{port}"
        try:
            client.connect(**kwargs)
        except paramiko.BadHostKeyException:
            client.close()
            raise ConnectorFailure(
                f"the host key of {host}:{port} has CHANGED: it does not match the key recorded in "
                f"{known_hosts}; refusing to connect (possible man-in-the-middle attack). If the server "
                f"was really re-keyed, remove its old entry from {known_hosts}"
            ) from None
        except paramiko.AuthenticationException:
            client.close()
            raise ConnectorFailure(login_refused(access)) from None
        except paramiko.SSHException as exc:
            client.close()
            if "not found in known_hosts" in str(exc):
                raise ConnectorFailure(
                    f"the host key of {host}:{port} is not in {known_hosts} and hostKeyPolicy is strict; "
                    f"add it (ssh-keyscan -p {port} {host}) or use hostKeyPolicy accept-new"
                ) from None
            raise TransientFailure(f"SSH error with {where}: {exc}") from None
        except TimeoutError:
            client.close()
            raise TransientFailure(f"cannot connect to {host}:{port}: timed out") from None
        except (paramiko.ssh_exception.NoValidConnectionsError, OSError) as exc:
            client.close()
            reason = "connection refused" if "refused" in str(exc).lower() else str(exc)
            raise TransientFailure(f"cannot connect to {host}:{port}: {reason}") from None
        transport = client.get_transport()
        if transport is not None:
            transport.set_keepalive(30)
        return client

    def _sftp(self, access):
        import paramiko

        client = self._client(access)
        try:
            sftp = client.open_sftp()
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise TransientFailure(f"cannot open an SFTP session on {access['host']}: {exc}") from None
        sftp.get_channel().settimeout(float(self.timeout or 120))
        return sftp

    # ---------------------------------------------------------------- validation

    def validate(self, access, operation, listing=None):
        access = self._with_known_hosts(access)
        if operation == "mount-dir":
            _require_programs()
        sftp = self._sftp(access)
        try:
            if operation == "receive-file":
                _expect_kind(sftp, remote_path(access["filePath"]), "file")
            elif operation == "receive-dir":
                root = remote_path(access["dirPath"])
                _expect_kind(sftp, root, "directory")
                for rel, _item in listed_files(listing):
                    _expect_kind(sftp, posixpath.join(root, safe_relative(rel)), "file")
            elif operation == "mount-dir" and not access.get("writable"):
                _expect_kind(sftp, remote_path(access["dirPath"]), "directory")
        finally:
            sftp.close()

    # ---------------------------------------------------------------- primitives

    def receive_file(self, access, dest: Path, progress: Progress) -> None:
        access = self._with_known_hosts(access)
        remote = remote_path(access["filePath"])
        with _transfer(self, access) as sftp, Sftp(self._sftp_pool, access) as files:
            progress.expect(_expect_kind(sftp, remote, "file").st_size or 0)
            _get(files, remote, dest, progress)

    def receive_dir(self, access, dest: Path, listing: Listing | None, progress: Progress) -> None:
        access = self._with_known_hosts(access)
        root = remote_path(access["dirPath"])
        with _transfer(self, access) as sftp, Sftp(self._sftp_pool, access) as files:
            _expect_kind(sftp, root, "directory")
            if listing is not None:
                for rel in listed_dirs(listing):
                    (dest / safe_relative(rel)).mkdir(parents=True, exist_ok=True)
                names = [safe_relative(rel) for rel, _item in listed_files(listing)]
                _check_listed_inside(sftp, root, names)
            else:
                names = _walk_remote(sftp, root, dest)
            for rel in names:
                target = dest / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                _get(files, posixpath.join(root, rel), target, progress)

    def send_file(self, access, src: Path, progress: Progress) -> None:
        access = self._with_known_hosts(access)
        remote = remote_path(access["filePath"])
        _refuse_escaping_link(src, Path(src).parent)
        with _transfer(self, access) as sftp, Sftp(self._sftp_pool, access) as files:
            _makedirs(sftp, posixpath.dirname(remote))
            _put(sftp, files, src, remote, progress)

    def send_dir(self, access, src: Path, listing: Listing | None, progress: Progress) -> None:
        access = self._with_known_hosts(access)
        root = remote_path(access["dirPath"])
        tree = output_tree(src, listing)  # links out of the output are refused, links inside copied
        with _transfer(self, access) as sftp, Sftp(self._sftp_pool, access) as files:
            _makedirs(sftp, root)
            for rel in tree.dirs:
                _makedirs(sftp, posixpath.join(root, rel))
            for item in tree.files:
                _put(sftp, files, item.path, posixpath.join(root, item.rel), progress)

    def mount_dir(self, access, mountpoint: Path, writable: bool) -> None:
        access = self._with_known_hosts(access)
        _require_programs()
        writable = bool(writable or access.get("writable", False))
        remote = remote_path(access["dirPath"])
        # Log in with paramiko first: host key policy, credentials and the remote directory
        # are checked with clear messages (ssh's own go to sshfs's pty and are lost).
        with _transfer(self, access) as sftp:
            if writable:
                _makedirs(sftp, remote)
            else:
                _expect_kind(sftp, remote, "directory")
        mount_sshfs(access, remote, Path(mountpoint), writable, timeout=float(self.timeout or 60))
        with self._lock:
            self._mounts[Path(mountpoint)] = writable

    def umount_dir(self, mountpoint: Path) -> None:
        with self._lock:
            writable = self._mounts.pop(Path(mountpoint), None)
        if not unmount(Path(mountpoint)) and writable:
            # Something still used the mount: it is only detached, and writes through it
            # may not have reached the remote side yet (upstream ignored this, flaw 21).
            raise ConnectorFailure(f"the writable mount {mountpoint} was busy and could only be detached "
                                   "lazily; files written through it may not have reached the remote directory")

    def close(self) -> None:
        with self._lock:
            mounts, self._mounts = list(self._mounts), {}
            clients, self._clients = list(self._clients.values()), {}
        for mountpoint in mounts:
            try:
                unmount(mountpoint)
            except ConnectorFailure:
                pass
        for client in clients:
            client.close()
        self._sftp_pool.close()


# -------------------------------------------------------------------- host keys


def _policy(access) -> str:
    return str(access.get("hostKeyPolicy", "accept-new"))


def _known_hosts(access) -> Path:
    """The access's host-key file (the connector's entry points fill in the host's default)."""
    return Path(os.path.expanduser(str(access["knownHostsFile"])))


def _host_entry(hostname: str) -> str:
    return hostname  # paramiko already gives "[host]:port" for non-22 ports


class _RecordNewKey:
    """accept-new: trust a host seen for the first time and record it; changed keys fail."""

    _file_lock = threading.Lock()

    def __init__(self, known_hosts: Path) -> None:
        self.known_hosts = known_hosts

    def missing_host_key(self, client, hostname, key) -> None:
        client.get_host_keys().add(hostname, key.get_name(), key)
        with self._file_lock:
            self.known_hosts.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.known_hosts, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            with os.fdopen(fd, "a") as handle:
                handle.write(f"{_host_entry(hostname)} {key.get_name()} {key.get_base64()}\n")


# -------------------------------------------------------------------- keys


def load_private_key(text: str, passphrase: str | None):
    """An ed25519, ECDSA or RSA key from its text (OpenSSH or PEM), decrypted if needed."""
    import paramiko

    if "\\n" in text and "\n" not in text.strip():
        text = text.replace("\\n", "\n")  # keys pasted as one line with \n escapes
    text = text.strip() + "\n"
    needs_passphrase = False
    for cls in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return cls.from_private_key(io.StringIO(text), password=passphrase or None)
        except paramiko.PasswordRequiredException:
            needs_passphrase = True
        except (paramiko.SSHException, ValueError, TypeError, IndexError) as exc:
            if "passphrase" in str(exc).lower() or "decrypt" in str(exc).lower():
                needs_passphrase = needs_passphrase or not passphrase
                if passphrase:
                    raise ConnectorFailure("auth.passphrase does not decrypt auth.privateKey") from None
            continue
    if needs_passphrase:
        raise ConnectorFailure("auth.privateKey is encrypted: give auth.passphrase")
    raise ConnectorFailure("auth.privateKey is not an ed25519, ECDSA or RSA private key (or the passphrase is wrong)")


# -------------------------------------------------------------------- sftp helpers


def remote_path(path: str) -> str:
    """Upstream semantics: ``~/x`` and ``x`` are relative to the login's home directory."""
    if path == "~":
        return "."
    if path.startswith("~/"):
        path = path[2:]
    return path or "."


class _transfer:
    """``with _transfer(connector, access) as sftp``: an SFTP session with errors mapped."""

    def __init__(self, connector: SshConnector, access) -> None:
        self.connector = connector
        self.access = access
        self.sftp = None

    def __enter__(self):
        self.sftp = self.connector._sftp(self.access)
        return self.sftp

    def __exit__(self, exc_type, exc, tb):
        import socket

        import paramiko

        try:
            self.sftp.close()
        except Exception:
            pass
        if exc is None or isinstance(exc, ConnectorFailure):
            return False
        if isinstance(exc, (EOFError, socket.timeout, TimeoutError, paramiko.SSHException, ConnectionError)):
            raise TransientFailure(f"SFTP transfer with {self.access['host']} interrupted: "
                                   f"{type(exc).__name__}: {exc}") from None
        if isinstance(exc, PermissionError) or (isinstance(exc, OSError) and exc.errno == 13):
            raise ConnectorFailure(f"permission denied on the remote side: {exc}") from None
        if isinstance(exc, FileNotFoundError) or (isinstance(exc, OSError) and exc.errno == 2):
            raise ConnectorFailure(f"remote path not found: {exc}") from None
        if isinstance(exc, OSError) and exc.filename is None and exc.errno is None:
            raise TransientFailure(f"SFTP transfer with {self.access['host']} failed: {exc}") from None
        return False


def _expect_kind(sftp, path: str, kind: str):
    try:
        attrs = sftp.stat(path)
    except FileNotFoundError:
        raise ConnectorFailure(f"remote {kind} {path!r} does not exist") from None
    except PermissionError:
        raise ConnectorFailure(f"remote {kind} {path!r} is not accessible (permission denied)") from None
    is_dir = stat.S_ISDIR(attrs.st_mode or 0)
    if kind == "file" and is_dir:
        raise ConnectorFailure(f"remote path {path!r} is a directory, not a file")
    if kind == "directory" and not is_dir:
        raise ConnectorFailure(f"remote path {path!r} is not a directory")
    return attrs


def _refuse_escaping_link(path: Path, root: Path) -> None:
    """An output reached through a link is sent only if the link stays inside ``root``:
    never a host file (``results/leak -> ~/.ssh/id_ed25519``) through an output."""
    real = path.resolve()
    if not real.is_relative_to(root.resolve()):
        raise ConnectorFailure(f"output {path} is a link to {real}, outside {root}; refusing to send it")


def _get(files: Sftp, remote: str, local: Path, progress: Progress) -> None:
    """One download; the local part file is removed by the staging layer on failure."""
    files.get(remote, local, progress)


def _put(sftp, files: Sftp, local: Path, remote: str, progress: Progress) -> None:
    """Upload under a hidden temp name, then rename: readers never see a half-written file.

    Whatever stops the upload (an error, Ctrl-C, a cancelled batch) removes the remote
    ``.faice-part`` file before the exception goes on.
    """
    part = posixpath.join(posixpath.dirname(remote), f".{posixpath.basename(remote)}.faice-part")
    try:
        files.put(local, part, progress)
        try:
            sftp.remove(remote)  # posix_rename replaces atomically; plain rename needs this
        except OSError:
            pass
        sftp.posix_rename(part, remote)
    except BaseException:
        try:
            sftp.remove(part)
        except Exception:
            pass
        raise


SFTP_MAX_REQUESTS = 128  # parallel SFTP reads/writes in flight (asyncssh pipelining)


class _Stopped(Exception):
    """Carries an exception raised by a progress callback out of the event loop thread."""

    def __init__(self, original: BaseException) -> None:
        super().__init__(str(original))
        self.original = original


class SftpPool:
    """Every file transfer of the ssh connector: pipelined SFTP through asyncssh.

    One implementation at every size: remote paths go to the server as SFTP path strings,
    so nothing globs them (``run[1].h5`` is that file) or splits them at spaces, and there
    is no child process that could outlive faice or show a secret in ``ps``: the password or
    key stays in this process's memory. Host keys were already checked (and recorded for
    ``accept-new``) by the paramiko login, so these sessions require the same known_hosts
    entry; ``ignore`` skips the check as there.

    One event loop thread per connector holds one logged-in SFTP session per account, shared
    by every transfer (and thread) of the run. A caller interrupted while it waits (Ctrl-C)
    cancels its transfer before the exception goes on.
    """

    def __init__(self, timeout: float | None) -> None:
        self.timeout = float(timeout or 120)
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._sessions: dict[tuple, tuple] = {}
        self._opening: dict[tuple, threading.Lock] = {}

    # ------------------------------------------------------------ loop and sessions

    def _run(self, coroutine):
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
                future.cancel()  # Ctrl-C or similar in this thread: stop the transfer too
                concurrent.futures.wait([future], timeout=10)
            raise

    def _session(self, access):
        key = _account_key(access)
        with self._lock:
            opening = self._opening.setdefault(key, threading.Lock())
        with opening:  # one login per account, also when several threads start at once
            with self._lock:
                found = self._sessions.get(key)
            if found is not None and not found[0].is_closed():
                return found[1]
            conn, sftp = self._run(self._open(access))
            with self._lock:
                old, self._sessions[key] = self._sessions.get(key), (conn, sftp)
            if old is not None and self._loop is not None:  # a dead session: nothing uses it
                self._loop.call_soon_threadsafe(old[0].abort)
            return sftp

    async def _open(self, access):
        import asyncssh

        auth = access["auth"]
        options: dict = {
            "host": access["host"], "port": int(access.get("port", 22)), "username": auth["username"],
            "config": [], "agent_path": None,
            "known_hosts": None if _policy(access) == "ignore" else str(_known_hosts(access)),
            "connect_timeout": self.timeout, "login_timeout": float(access.get("authTimeout", self.timeout)),
            "keepalive_interval": 15, "keepalive_count_max": 4, "encryption_algs": _fast_ciphers(),
        }
        if "password" in auth:
            options.update(password=auth["password"], client_keys=None,
                           preferred_auth="password,keyboard-interactive")
        else:
            options.update(client_keys=[_asyncssh_key(auth["privateKey"], auth.get("passphrase"))],
                           preferred_auth="publickey")
        try:
            conn = await asyncssh.connect(**options)
        except BaseException as exc:
            raise _mapped(exc, access) from None
        try:
            return conn, await conn.start_sftp_client()
        except BaseException as exc:
            conn.abort()
            raise _mapped(exc, access) from None

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

    # ------------------------------------------------------------ transfers

    def get(self, access, remote: str, local: Path, progress: Progress) -> None:
        self._copy(access, "get", remote.encode(), str(local), progress)

    def put(self, access, local: Path, remote: str, progress: Progress) -> None:
        self._copy(access, "put", str(local), remote.encode(), progress)

    def _copy(self, access, direction: str, src, dst, progress: Progress) -> None:
        sftp = self._session(access)
        seen = [0]

        def handler(_src, _dst, done: int, _total: int) -> None:
            if done > seen[0]:
                try:
                    progress.advance(done - seen[0])
                except BaseException as exc:  # e.g. a cancel raised by the caller's callback
                    raise _Stopped(exc) from None
                seen[0] = done

        async def copy() -> None:
            try:
                if direction == "get":
                    await sftp.get(src, dst, max_requests=SFTP_MAX_REQUESTS, follow_symlinks=True,
                                   progress_handler=handler)
                else:
                    await sftp.put(src, dst, max_requests=SFTP_MAX_REQUESTS, follow_symlinks=True,
                                   progress_handler=handler)
            except (_Stopped, asyncio.CancelledError):
                raise
            except BaseException as exc:
                raise _mapped(exc, access) from None

        self._run(copy())


class Sftp:
    """``with Sftp(pool, access) as files``: transfers for one account from the shared pool."""

    def __init__(self, pool: SftpPool, access) -> None:
        self.pool = pool
        self.access = access

    def __enter__(self) -> Sftp:
        self.pool._session(self.access)  # log in now: errors surface before any transfer
        return self

    def __exit__(self, *exc_info) -> None:
        return None

    def get(self, remote: str, local: Path, progress: Progress) -> None:
        self.pool.get(self.access, remote, local, progress)

    def put(self, local: Path, remote: str, progress: Progress) -> None:
        self.pool.put(self.access, local, remote, progress)


def _account_key(access) -> tuple:
    auth = access["auth"]
    return (access["host"], int(access.get("port", 22)), auth["username"], auth.get("password"),
            auth.get("privateKey"), auth.get("passphrase"), _policy(access), str(_known_hosts(access)),
            access.get("authTimeout"))


def _fast_ciphers() -> list[str]:
    """asyncssh's defaults with AES-GCM first: AES-NI in OpenSSL on both ends, where its
    ChaCha20-Poly1305 costs this process about 1.7x the CPU per byte."""
    from asyncssh.encryption import get_default_encryption_algs

    names = [alg.decode() for alg in get_default_encryption_algs()]
    return sorted(names, key=lambda name: (not name.startswith("aes128-gcm"), not name.endswith("-gcm@openssh.com")))


def _asyncssh_key(text: str, passphrase: str | None):
    import asyncssh

    load_private_key(text, passphrase)  # the same checks and messages as the login
    if "\\n" in text and "\n" not in text.strip():
        text = text.replace("\\n", "\n")
    return asyncssh.import_private_key(text.strip() + "\n", passphrase or None)


def _mapped(exc: BaseException, access) -> BaseException:
    """asyncssh and SFTP errors as connector failures; anything else unchanged."""
    import asyncssh

    if isinstance(exc, ConnectorFailure | TransientFailure):
        return exc
    host, port = access["host"], int(access.get("port", 22))
    if isinstance(exc, asyncssh.PermissionDenied):
        return ConnectorFailure(login_refused(access))
    if isinstance(exc, asyncssh.HostKeyNotVerifiable):
        return ConnectorFailure(f"host key verification failed for {host}:{port} "
                                f"(hostKeyPolicy {_policy(access)}, {_known_hosts(access)})")
    if isinstance(exc, asyncssh.SFTPNoSuchFile):
        return ConnectorFailure(f"remote path not found: {exc.reason}")
    if isinstance(exc, asyncssh.SFTPPermissionDenied):
        return ConnectorFailure(f"permission denied on the remote side: {exc.reason}")
    if isinstance(exc, asyncssh.SFTPError):
        return ConnectorFailure(f"SFTP error from {host}: {exc.reason}")
    if isinstance(exc, asyncssh.DisconnectError | asyncssh.ChannelOpenError | ConnectionError | EOFError):
        return TransientFailure(f"SFTP transfer with {host} interrupted: {exc}")
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return TransientFailure(f"SFTP transfer with {host}:{port} timed out")
    if isinstance(exc, OSError) and exc.filename is None:
        return TransientFailure(f"cannot connect to {host}:{port}: {exc.strerror or exc}")
    return exc


def login_refused(access) -> str:
    """The one message for wrong credentials (the secret itself is never part of it)."""
    auth = access["auth"]
    return f"ssh: login refused for {auth['username']}@{access['host']}:{int(access.get('port', 22))}"


def _makedirs(sftp, path: str) -> None:
    if path in ("", ".", "/"):
        return
    try:
        if stat.S_ISDIR(sftp.stat(path).st_mode or 0):
            return
        raise ConnectorFailure(f"remote path {path!r} exists and is not a directory")
    except FileNotFoundError:
        pass
    _makedirs(sftp, posixpath.dirname(path.rstrip("/")))
    try:
        sftp.mkdir(path)
    except OSError:
        if not stat.S_ISDIR(sftp.stat(path).st_mode or 0):
            raise


def _inside(path: str, root: str) -> bool:
    root = root.rstrip("/") or "/"
    return path == root or path.startswith(root if root == "/" else root + "/")


def _walk_remote(sftp, root: str, dest: Path) -> list[str]:
    """Create the remote tree's directories under ``dest``; return its files (relative).

    Links are followed when their target stays inside ``root`` (a link cycle is refused);
    a link leaving it, or a dangling one, fails the transfer naming the link, so a batch
    never runs on silently partial data.
    """
    real_root = sftp.normalize(root)
    files: list[str] = []

    def walk(prefix: str, ancestors: frozenset[str]) -> None:
        here = posixpath.join(root, prefix) if prefix else root
        for entry in sorted(sftp.listdir_attr(here), key=lambda e: e.filename):
            rel = f"{prefix}{entry.filename}"
            safe_relative(rel)
            mode = entry.st_mode or 0
            real = None
            if stat.S_ISLNK(mode):
                real, mode = _follow_link(sftp, root, real_root, rel)
            if stat.S_ISDIR(mode):
                real = real or sftp.normalize(posixpath.join(root, rel))
                if real in ancestors:
                    raise ConnectorFailure(f"remote link {posixpath.join(root, rel)!r} loops back to "
                                           f"{real!r}; refusing to receive an endless tree")
                (dest / rel).mkdir(parents=True, exist_ok=True)
                walk(rel + "/", ancestors | {real})
            elif stat.S_ISREG(mode):
                files.append(rel)

    walk("", frozenset({real_root}))
    return files


def _follow_link(sftp, root: str, real_root: str, rel: str) -> tuple[str, int]:
    """The real path and mode behind remote link ``root/rel``, if it stays inside ``root``."""
    link = posixpath.join(root, rel)
    try:
        real = sftp.normalize(link)
        mode = sftp.stat(link).st_mode or 0
    except OSError:
        raise ConnectorFailure(f"remote link {link!r} is dangling (its target does not exist)") from None
    if not _inside(real, real_root):
        raise ConnectorFailure(f"remote link {link!r} points to {real!r}, outside the received directory "
                               f"{real_root!r}; only links inside it are followed")
    return real, mode


def _check_listed_inside(sftp, root: str, rels: list[str]) -> None:
    """A listed file reached through a link must still lie inside the remote root."""
    real_root = sftp.normalize(root)
    for rel in rels:
        remote = posixpath.join(root, rel)
        if not stat.S_ISLNK(sftp.lstat(remote).st_mode or 0) and "/" not in rel:
            continue
        real = sftp.normalize(remote)
        if not _inside(real, real_root):
            raise ConnectorFailure(f"remote path {remote!r} leads to {real!r}, outside the received "
                                   f"directory {real_root!r}; only links inside it are followed")


# -------------------------------------------------------------------- sshfs


def _require_programs() -> None:
    missing = [p for p in ("sshfs",) if shutil.which(p) is None]
    if shutil.which("fusermount3") is None and shutil.which("fusermount") is None:
        missing.append("fusermount3")
    if missing:
        raise ConnectorFailure(f"mounting needs {' and '.join(missing)} on this host (apt install sshfs fuse3)")


def _fuse_allows_other() -> bool:
    if os.geteuid() == 0:
        return True
    try:
        return any(line.strip() == "user_allow_other" for line in Path("/etc/fuse.conf").read_text().splitlines())
    except OSError:
        return False


SSHFS_HOST_ALIAS = "faice-sshfs-target"


def _config_value(text: str) -> str:
    """One ssh_config argument: quoted; values were checked to hold no quote or newline."""
    if any(ch in text for ch in '"\n\r\0'):
        raise ConnectorFailure(f"cannot pass {text!r} to ssh")
    return '"' + text.replace("%", "%%") + '"'


def mount_sshfs(access, remote: str, mountpoint: Path, writable: bool, *, timeout: float) -> None:
    """Mount on the host with sshfs.

    Every access value goes into a private ssh config file (``-F``), never into sshfs's
    ``-o`` list (FUSE splits that at commas, so a value could add options such as
    ``ssh_command=``) nor into argv (where ``ps`` shows it). The password goes through
    stdin; a key through a 0600 copy. The scratch dir is removed once mounted.
    """
    check_access_values(access)
    auth = access["auth"]
    host, port = access["host"], int(access.get("port", 22))
    policy, known_hosts = _policy(access), _known_hosts(access)
    config = [f"HostName {_config_value(host)}", f"User {_config_value(auth['username'])}", f"Port {port}",
              "ServerAliveInterval 15", f"ConnectTimeout {int(timeout)}"]
    if policy == "ignore":
        config += ["StrictHostKeyChecking no", "UserKnownHostsFile /dev/null"]
    else:
        known_hosts.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        config += [f"StrictHostKeyChecking {'yes' if policy == 'strict' else 'accept-new'}",
                   f"UserKnownHostsFile {_config_value(str(known_hosts))}", "GlobalKnownHostsFile /dev/null"]
    ciphers = access.get("ciphers")
    if ciphers:
        config.append(f"Ciphers {ciphers if isinstance(ciphers, str) else ','.join(ciphers)}")
    fuse_options = [] if writable else ["ro"]
    if _fuse_allows_other():
        fuse_options.append("allow_other")  # the container's user is not the host user that mounted
    stdin_data = None
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSH_")}
    scratch = private_dir("faice-sshfs-")
    try:
        if "password" in auth:
            fuse_options.append("password_stdin")
            config += ["PreferredAuthentications password,keyboard-interactive", "PubkeyAuthentication no"]
            stdin_data = auth["password"] + "\n"
        else:
            key_file = scratch / "key"
            text = auth["privateKey"]
            if "\\n" in text and "\n" not in text.strip():
                text = text.replace("\\n", "\n")
            _write_private(key_file, text.strip() + "\n")
            config += [f"IdentityFile {_config_value(str(key_file))}", "IdentitiesOnly yes",
                       "PasswordAuthentication no", "KbdInteractiveAuthentication no"]
            if auth.get("passphrase"):
                # ssh asks for the passphrase through SSH_ASKPASS: a helper that prints a
                # 0600 file; the environment holds only the file's path.
                secret = scratch / "passphrase"
                _write_private(secret, auth["passphrase"] + "\n")
                helper = scratch / "askpass"
                helper.write_text(f"#!/bin/sh\nexec cat '{secret}'\n")
                helper.chmod(0o700)
                env.update(SSH_ASKPASS=str(helper), SSH_ASKPASS_REQUIRE="force", DISPLAY=env.get("DISPLAY", ":0"))
            else:
                config.append("BatchMode yes")
        config_file = scratch / "ssh_config"
        _write_private(config_file, f"Host {SSHFS_HOST_ALIAS}\n" + "".join(f"  {line}\n" for line in config))
        command = ["sshfs", "-F", str(config_file), f"{SSHFS_HOST_ALIAS}:{remote}", str(mountpoint)]
        if fuse_options:
            command += ["-o", ",".join(fuse_options)]
        try:
            result = subprocess.run(command, input=stdin_data, capture_output=True, text=True, timeout=timeout + 10,
                                    env=env, start_new_session=True)
        except subprocess.TimeoutExpired:
            unmount(mountpoint, missing_ok=True)
            raise TransientFailure(f"sshfs did not mount {host}:{remote} within {int(timeout + 10)} s") from None
        if result.returncode != 0:
            message = (result.stderr or result.stdout).strip()
            if "REMOTE HOST IDENTIFICATION HAS CHANGED" in message or "Host key verification failed" in message:
                if "CHANGED" in message:
                    message = (f"the host key of {host}:{port} has CHANGED: it does not match {known_hosts}; "
                               f"refusing to mount (possible man-in-the-middle attack)")
                else:
                    message = f"host key verification failed for {host}:{port} (hostKeyPolicy {policy}, {known_hosts})"
            elif "permission denied" in message.lower():
                raise ConnectorFailure(login_refused(access))
            raise ConnectorFailure(f"sshfs could not mount {host}:{remote}: {message or f'exit code {result.returncode}'}")
        if not os.path.ismount(mountpoint):
            raise ConnectorFailure(f"sshfs reported success but {mountpoint} is not mounted")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)  # the mounted sshfs no longer needs them


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def unmount(mountpoint: Path, *, missing_ok: bool = True) -> bool:
    """Unmount; a busy mount is detached lazily. True when the plain unmount succeeded."""
    if not os.path.ismount(mountpoint):
        if missing_ok:
            return True
        raise ConnectorFailure(f"{mountpoint} is not mounted")
    tool = shutil.which("fusermount3") or shutil.which("fusermount") or "fusermount3"
    result = subprocess.run([tool, "-u", str(mountpoint)], capture_output=True, text=True, timeout=30)
    if result.returncode != 0 and os.path.ismount(mountpoint):
        lazy = subprocess.run([tool, "-u", "-z", str(mountpoint)], capture_output=True, text=True, timeout=30)
        if lazy.returncode != 0 and os.path.ismount(mountpoint):
            raise ConnectorFailure(f"cannot unmount {mountpoint}: {(result.stderr or lazy.stderr).strip()}")
        return False
    return True
