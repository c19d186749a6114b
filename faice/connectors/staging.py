"""The connector framework the engines call: validate, stage in, mount, send, clean up.

One :class:`StagingSession` per run. It owns what every connector would otherwise repeat:
finding the connector, checking ``access`` against its schema with messages that name the
RED key path, retrying transient failures with backoff, writing downloads under a temp
name that is renamed only when complete, fetching an input shared by several batches once,
verifying sizes/checksums, progress, redaction, and unmounting/removing everything on close.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable, Collection
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from faice.connectors.api import (
    OPERATIONS,
    Connector,
    ConnectorFailure,
    HostIdentity,
    Progress,
    TransferCancelled,
    TransientFailure,
    listed_files,
)
from faice.connectors.cancellable import CancellableCalls
from faice.connectors.places import operation_name
from faice.connectors.trees import output_file, output_tree
from faice.descriptors import remove_tree
from faice.errors import ConnectorError, FaiceError
from faice.files import make_read_only
from faice.runtime.tempdirs import unmount_all
from faice.secrets import REDACTOR, Redactor, normalise_protected_keys, protected_values

ProgressCallback = Callable[[str, int, "int | None"], None]

RETRY_DELAYS = (0.5, 1.5)  # seconds before the 2nd and 3rd attempt


@dataclass
class ConnectorRequest:
    """One input or output to move: where it lives and what it is called in messages.

    ``label`` is the RED key path (``batches[0].inputs.data_dir``). ``checksum``
    (``sha1$…``, ``sha256$…``, ``md5$…``) and ``size`` are verified after a File download.
    """

    label: str
    command: str
    access: dict[str, Any]
    listing: list[dict[str, Any]] | None = None
    mount: bool = False
    checksum: str | None = None
    size: int | None = None
    _access: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    def prepared_access(self) -> dict[str, Any]:
        """``access`` with ``_key`` renamed to ``key`` (the session registers its secrets)."""
        if self._access is None:
            self._access = normalise_protected_keys(dict(self.access or {}))
        return self._access


class StagingSession:
    """Moves the data of one run; thread-safe; :meth:`close` is idempotent."""

    def __init__(
        self,
        workdir: Path,
        *,
        progress: ProgressCallback | None = None,
        timeout: float | None = None,
        redactor: Redactor | None = None,
        cancel: threading.Event | None = None,
        allowed_programs: Collection[str] | None = None,
        identity: HostIdentity | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        # What the host lends its connectors beyond each access (an agency lends nothing of
        # its account: no AWS chain, its own per-server known_hosts).
        self.identity = identity
        # Set by the run on Ctrl-C/SIGTERM: every connector call ends at once, even one stuck
        # waiting on a server (:mod:`faice.connectors.cancellable`); nothing is retried.
        self.cancel = cancel
        self._calls = CancellableCalls(cancel) if cancel is not None else None
        # A policy's externalPrograms: program paths a RED ``command`` may name (None: any).
        self.allowed_programs = allowed_programs
        # Masks what its connectors report; a batch of the agency passes its own, so one
        # user's messages are never matched against another user's secrets.
        self.redactor = REDACTOR if redactor is None else redactor
        self.progress = progress
        self.timeout = timeout
        self._lock = threading.Lock()
        self._connectors: dict[str, Connector] = {}
        self._cache: dict[str, Future[Path]] = {}
        self._mounts: dict[Path, Connector] = {}
        self._dir: Path | None = None
        self._closed = False

    # ------------------------------------------------------------------ public API

    def validate(self, request: ConnectorRequest, operation: str) -> None:
        """Schema + connector checks (credentials, remote path) for one operation."""
        connector = self._prepare(request, operation)
        self._call(request, operation, "validate", lambda: connector.validate(
            request.prepared_access(), operation, request.listing))

    def stage_in(self, request: ConnectorRequest, kind: str) -> Path:
        """Download a File/Directory input into the session cache; a read-only host path.

        Requests with the same command, access and listing share one download, also when
        several threads ask at the same time.
        """
        operation = operation_name("receive", kind)
        connector = self._prepare(request, operation)
        key = _cache_key(request, kind)
        with self._lock:
            self._check_open()
            shared = self._cache.get(key)
            if shared is None:
                future: Future[Path] = Future()
                self._cache[key] = future
        if shared is not None:
            return shared.result()
        try:
            path = self._download(connector, request, operation, key)
        except BaseException as exc:
            with self._lock:
                self._cache.pop(key, None)
            future.set_exception(exc)
            raise
        future.set_result(path)
        return path

    def send(self, request: ConnectorRequest, kind: str, src: Path, *, root: Path | None = None) -> None:
        """Upload a File/Directory output from the host path ``src``.

        ``root`` is the directory the output must stay in (the batch's ``/cc/outputs``; by
        default the directory holding a File, the Directory itself). Before any connector
        runs, a link out of it — the output itself or any entry of a Directory — is refused
        (:mod:`faice.connectors.trees`), so no plugin can be tricked into sending host files.
        """
        operation = operation_name("send", kind)
        src = Path(src)
        if kind == "File" and not src.is_file():
            raise ConnectorError(f"{request.label}: output file {src} does not exist")
        if kind == "Directory" and not src.is_dir():
            raise ConnectorError(f"{request.label}: output directory {src} does not exist")
        try:
            if kind == "File":
                output_file(src, root)
            else:
                output_tree(src, request.listing, root=root)
        except ConnectorFailure as exc:
            raise ConnectorError(REDACTOR.redact(f"{request.label}: {operation} refused: {exc}")) from None
        connector = self._prepare(request, operation)
        progress = self._progress(request)
        access = request.prepared_access()

        def restart_progress() -> None:  # a retried upload starts from zero again
            progress.done = 0

        if kind == "File":
            progress.expect(src.stat().st_size)
            self._call(request, operation, "send", lambda: connector.send_file(access, src, progress),
                       before_retry=restart_progress)
        else:
            self._call(request, operation, "send", lambda: connector.send_dir(
                access, src, request.listing, progress), before_retry=restart_progress)

    def mount_dir(self, request: ConnectorRequest, mountpoint: Path, writable: bool) -> None:
        """Mount a remote directory on the host (sshfs); the engine bind-mounts it."""
        connector = self._prepare(request, "mount-dir")
        mountpoint = Path(mountpoint)
        mountpoint.mkdir(parents=True, exist_ok=True)
        access = request.prepared_access()
        # Not abandoned at cancel: a mount that finished behind the session's back would never
        # be unmounted (sshfs bounds its own wait).
        self._call(request, "mount-dir", "mount", lambda: connector.mount_dir(access, mountpoint, writable),
                   retry=False, cancellable=False)
        with self._lock:
            self._mounts[mountpoint] = connector

    def umount(self, mountpoint: Path) -> None:
        """Unmount a directory mounted by :meth:`mount_dir` (no-op when not mounted)."""
        mountpoint = Path(mountpoint)
        with self._lock:
            connector = self._mounts.pop(mountpoint, None)
        if connector is None:
            return
        try:
            connector.umount_dir(mountpoint)
        except ConnectorError:
            raise
        except Exception as exc:
            raise ConnectorError(self.redactor.redact(f"unmounting {mountpoint} failed: {_describe(exc)}")) from exc

    def close(self) -> None:
        """Unmount everything, remove the cache, release connections. Idempotent."""
        with self._lock:
            self._closed = True
            mounts = list(self._mounts)
            connectors = list(self._connectors.values())
            self._connectors.clear()
            staging_dir, self._dir = self._dir, None
        if self._calls is not None:
            self._calls.close()
        for mountpoint in mounts:
            try:
                self.umount(mountpoint)
            except Exception:  # cleanup goes on; the mount is retried lazily by fusermount -z
                unmount_all(mountpoint)
        for connector in connectors:
            try:
                connector.close()
            except Exception:
                pass
        if staging_dir is not None:
            remove_tree(staging_dir)

    def __enter__(self) -> StagingSession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ internals

    def _check_open(self) -> None:
        if self._closed:
            raise ConnectorError("the staging session is closed")

    def _staging_dir(self) -> Path:
        with self._lock:
            self._check_open()
            if self._dir is None:
                self.workdir.mkdir(parents=True, exist_ok=True)
                self._dir = Path(tempfile.mkdtemp(prefix="faice-staging-", dir=self.workdir))
            return self._dir

    def _connector(self, command: str) -> Connector:
        from faice.connectors.registry import resolve

        with self._lock:
            self._check_open()
            connector = self._connectors.get(command)
        if connector is None:
            connector = resolve(command, timeout=self.timeout, allowed_paths=self.allowed_programs,
                                identity=self.identity, cancel=self.cancel)
            with self._lock:
                connector = self._connectors.setdefault(command, connector)
        return connector

    def _prepare(self, request: ConnectorRequest, operation: str) -> Connector:
        if operation not in OPERATIONS:
            raise ValueError(f"unknown connector operation {operation!r}")
        if request.mount and operation != "mount-dir":
            kind = "File" if operation.endswith("-file") else "Directory"
            if operation.startswith("send") or kind == "File":
                raise ConnectorError(
                    f"{request.label}.connector.mount: only Directory inputs can be mounted "
                    f"(this is a {'output' if operation.startswith('send') else 'File input'})"
                )
        try:
            connector = self._connector(request.command)
        except FaiceError as exc:
            raise ConnectorError(f"{request.label}.connector.command: {exc.message}") from exc
        if not connector.supports(operation):
            raise ConnectorError(
                f"{request.label}: connector {request.command!r} does not support {operation} "
                f"(it supports: {', '.join(sorted(connector.capabilities())) or 'nothing'})"
            )
        self.redactor.add_all(protected_values(request.access))
        check_access(connector, request, operation, redactor=self.redactor)
        check_listing(request)
        return connector

    def _progress(self, request: ConnectorRequest) -> Progress:
        if self.progress is None:
            return Progress(cancel=self.cancel)
        callback = self.progress
        return Progress(lambda done, total: callback(request.label, done, total), cancel=self.cancel)

    def _check_cancelled(self, request: ConnectorRequest) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise ConnectorError(f"{request.label}: cancelled (the run is stopping)")

    def _call(self, request: ConnectorRequest, operation: str, verb: str, action: Callable[[], Any],
              *, retry: bool = True, before_retry: Callable[[], None] | None = None,
              cancellable: bool = True) -> Any:
        """Run a connector primitive; retry transient failures; wrap errors for the user."""
        delays = RETRY_DELAYS if retry else ()
        attempt = 0
        while True:
            self._check_cancelled(request)
            try:
                if cancellable and self._calls is not None:
                    return self._calls.run(action)
                return action()
            except TransferCancelled:
                raise ConnectorError(f"{request.label}: {operation} cancelled (the run is stopping)") from None
            except FaiceError as exc:
                raise ConnectorError(self.redactor.redact(
                    f"{request.label}: {operation} with connector {request.command!r} failed: {exc.message}"
                )) from None
            except (TransientFailure, ConnectionError, TimeoutError) as exc:
                if self.cancel is not None and self.cancel.is_set():
                    raise ConnectorError(f"{request.label}: {operation} cancelled (the run is stopping)") from None
                if attempt >= len(delays):
                    raise self._wrap(request, operation, exc, attempt + 1) from None
                if self.cancel is not None:
                    self.cancel.wait(delays[attempt])  # the loop's first line sees it
                else:
                    time.sleep(delays[attempt])
                attempt += 1
                if before_retry is not None:
                    before_retry()
            except ConnectorFailure as exc:
                raise self._wrap(request, operation, exc, attempt + 1) from None
            except NotImplementedError:
                raise ConnectorError(
                    f"{request.label}: connector {request.command!r} does not support {operation}"
                ) from None
            except OSError as exc:
                raise self._wrap(request, operation, exc, attempt + 1) from None
            except Exception as exc:  # a plugin bug or an unmapped library error: still one clear line
                raise self._wrap(request, operation, exc, attempt + 1) from exc

    def _wrap(self, request: ConnectorRequest, operation: str, exc: BaseException, attempts: int) -> ConnectorError:
        tries = f" (after {attempts} attempts)" if attempts > 1 else ""
        return ConnectorError(self.redactor.redact(
            f"{request.label}: {operation} with connector {request.command!r} failed{tries}: {_describe(exc)}"
        ), transient=isinstance(exc, TransientFailure | ConnectionError | TimeoutError))

    def _download(self, connector: Connector, request: ConnectorRequest, operation: str, key: str) -> Path:
        root = self._staging_dir()
        final_dir = root / key
        name = _basename(request)
        part_dir = Path(tempfile.mkdtemp(prefix=f".part-{key}-", dir=root))
        part = part_dir / name
        progress = self._progress(request)
        access = request.prepared_access()

        def reset() -> None:
            remove_tree(part)
            progress.done = 0

        try:
            if operation == "receive-file":
                self._call(request, operation, "receive",
                           lambda: connector.receive_file(access, part, progress), before_retry=reset)
                if not part.is_file():
                    raise ConnectorError(f"{request.label}: connector {request.command!r} wrote no file")
                verify_file(request.label, part, size=request.size, checksum=request.checksum)
            else:
                part.mkdir()

                def receive() -> None:
                    part.mkdir(exist_ok=True)
                    connector.receive_dir(access, part, request.listing, progress)

                self._call(request, operation, "receive", receive, before_retry=reset)
                verify_listing(request.label, part, request.listing)
            make_read_only(part)
            os.rename(part_dir, final_dir)
        except BaseException:
            remove_tree(part_dir)
            raise
        return final_dir / name


# ---------------------------------------------------------------------- helpers


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ConnectorFailure):
        return str(exc)
    text = str(exc) or type(exc).__name__
    if isinstance(exc, OSError) and not isinstance(exc, ConnectionError | TimeoutError):
        return text
    return f"{type(exc).__name__}: {text}" if str(exc) else text


def _cache_key(request: ConnectorRequest, kind: str) -> str:
    material = json.dumps(
        [kind, request.command, request.prepared_access(), request.listing, request.checksum, request.size],
        sort_keys=True, default=str,
    )
    return hashlib.sha256(material.encode()).hexdigest()[:24]


def _basename(request: ConnectorRequest) -> str:
    """A readable name for the cached copy: the remote basename when the access shows one."""
    access = request.prepared_access()
    for key in ("filePath", "dirPath", "path", "url"):
        value = access.get(key)
        if isinstance(value, str):
            base = value.rstrip("/").split("?", 1)[0].rsplit("/", 1)[-1]
            if base and base not in (".", "..", "~") and ":" not in base:
                return base
    return "data"


def check_access(connector: Connector, request: ConnectorRequest, operation: str, *,
                 redactor: Redactor = REDACTOR) -> None:
    """Validate ``access`` against the connector's schema; errors name the RED key path."""
    from jsonschema import Draft202012Validator

    schema = connector.schema_for(operation)
    validator = Draft202012Validator(schema)
    access = request.prepared_access()
    problems = sorted(validator.iter_errors(access), key=lambda e: list(e.absolute_path))
    if problems:
        lines = [f"{_access_path(request.label, e)}: {explain_schema_error(e)}" for e in problems]
        raise ConnectorError(redactor.redact("\n".join(lines)))


def _access_path(label: str, error) -> str:
    from faice.errors import format_key_path

    tail = format_key_path(list(error.absolute_path)) if error.absolute_path else ""
    base = f"{label}.connector.access"
    return f"{base}.{tail}" if tail and not tail.startswith("[") else base + tail


_TYPE_WORDS = {"integer": "integer", "number": "number", "string": "string", "boolean": "boolean (true/false)",
               "object": "mapping", "array": "list", "null": "null"}


def explain_schema_error(error) -> str:
    """A short message that never repeats the offending value (it may be a secret)."""
    kind = error.validator
    if kind == "type":
        expected = error.validator_value
        names = [expected] if isinstance(expected, str) else list(expected)
        return "expected " + " or ".join(_TYPE_WORDS.get(n, n) for n in names)
    if kind == "required":
        missing = [k for k in error.validator_value if k not in (error.instance or {})]
        return "missing required key " + ", ".join(repr(k) for k in missing)
    if kind == "additionalProperties":
        allowed = set(error.schema.get("properties") or {})
        extra = sorted((k for k in (error.instance or {}) if k not in allowed), key=str)  # YAML keys may be numbers
        return f"unknown key {', '.join(repr(k) for k in extra)} (allowed: {', '.join(sorted(allowed))})"
    if kind == "enum":
        return "expected one of " + ", ".join(json.dumps(v) for v in error.validator_value)
    if kind in ("oneOf", "anyOf"):
        options = []
        for sub in error.validator_value:
            keys = sub.get("required") or list(sub.get("properties") or {})
            if keys:
                options.append("{" + ", ".join(keys) + "}")
        return "expected one of " + " or ".join(options) if options else "does not match any allowed form"
    if kind == "minimum":
        return f"expected at least {error.validator_value}"
    if kind == "maximum":
        return f"expected at most {error.validator_value}"
    if kind == "minLength":
        return "must not be empty" if error.validator_value == 1 else f"expected at least {error.validator_value} characters"
    if kind == "pattern":
        return f"expected text matching {error.validator_value}"
    return f"not valid ({kind})"


def check_listing(request: ConnectorRequest) -> None:
    """Listing items need a class and a plain basename (never a path that leaves the target)."""

    def walk(items: Any, path: str) -> None:
        if not isinstance(items, list):
            raise ConnectorError(f"{path}: expected a list")
        for index, item in enumerate(items):
            where = f"{path}[{index}]"
            if not isinstance(item, dict):
                raise ConnectorError(f"{where}: expected a mapping with class and basename")
            if item.get("class") not in ("File", "Directory"):
                raise ConnectorError(f"{where}.class: expected one of \"File\", \"Directory\"")
            name = item.get("basename")
            if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\\" in name:
                raise ConnectorError(f"{where}.basename: expected a plain file name (no '/', not '..')")
            if item["class"] == "Directory" and item.get("listing") is not None:
                walk(item["listing"], f"{where}.listing")

    if request.listing is not None:
        walk(request.listing, f"{request.label}.listing")


def file_digest(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def verify_file(label: str, path: Path, *, size: int | None = None, checksum: str | None = None) -> None:
    """Size and CWL checksum (``sha1$hex``) checks; a mismatch fails the input."""
    if size is not None:
        actual = path.stat().st_size
        if actual != int(size):
            raise ConnectorError(f"{label}: received {actual} bytes but the RED file says size {size}")
    if checksum:
        name, _, expected = str(checksum).partition("$")
        if not expected:
            name, expected = "sha1", name
        algorithm = name.lower()
        if algorithm not in hashlib.algorithms_available:
            raise ConnectorError(f"{label}.checksum: unknown checksum algorithm {algorithm!r}")
        digest = file_digest(path, algorithm)
        if digest.lower() != expected.lower():
            raise ConnectorError(
                f"{label}: checksum mismatch: expected {algorithm}${expected}, received {algorithm}${digest}"
            )


def verify_listing(label: str, root: Path, listing: list[dict[str, Any]] | None) -> None:
    """Every listed file arrived, with the listed size/checksum."""
    for rel, item in listed_files(listing):
        path = root / rel
        if not path.is_file():
            raise ConnectorError(f"{label}: listed file {rel!r} was not received")
        verify_file(f"{label}.listing ({rel})", path, size=item.get("size"), checksum=item.get("checksum"))
