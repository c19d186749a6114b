"""The public connector plugin API (version 1).

A connector moves one File or Directory between a location (``access``) and a host path.
A plugin subclasses :class:`Connector`, names the RED ``command`` values it answers to, gives
a JSON Schema for ``access`` and overrides the primitives it supports. Everything else —
lookup, access-schema validation, retries with backoff, timeouts, temp names for partial
downloads, caching of shared inputs, progress, redaction and error wrapping — belongs to the
framework (:mod:`faice.connectors.staging`), so a plugin stays small.

Register a plugin in its package metadata under the entry-point group ``faice.connectors.v1``
(one entry per ``command`` name, pointing at the class). The built-in connectors in
``faice_connectors`` use exactly this API.

Two helper modules belong to the API: :mod:`faice.connectors.trees` (the files of an output,
never following a link out of it) and :mod:`faice.connectors.archives` (tar/zip extraction by
faice's own member rules).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from threading import Event
from typing import Any, ClassVar

Access = Mapping[str, Any]
Listing = list[dict[str, Any]]

OPERATIONS = ("receive-file", "receive-dir", "mount-dir", "send-file", "send-dir")

# operation -> the method a connector overrides to support it
_PRIMITIVES = {
    "receive-file": "receive_file",
    "receive-dir": "receive_dir",
    "mount-dir": "mount_dir",
    "send-file": "send_file",
    "send-dir": "send_dir",
}


class ConnectorFailure(Exception):
    """A plugin's way to report a failure the user can act on (bad path, refused login).

    The framework wraps it into :class:`faice.errors.ConnectorError` with the RED key path of
    the input/output, and redacts the message. Raise :class:`TransientFailure` instead when
    trying again may help (dropped connection, HTTP 503).
    """


class TransientFailure(ConnectorFailure):
    """A failure that may go away on a retry; the framework retries with backoff."""


class TransferCancelled(ConnectorFailure):
    """The run was cancelled (Ctrl-C, SIGTERM, a cancelled batch): raised by
    :meth:`Progress.advance` so that a transfer loop stops at its next chunk. Never retried;
    the framework removes the partial download."""


class Progress:
    """Byte counts reported by a transfer; the framework turns them into progress output.

    A plugin calls :meth:`expect` when it learns a size and :meth:`advance` for every chunk.
    ``advance`` raises :class:`TransferCancelled` once the run is cancelled, so a plugin that
    reports progress per chunk stops within one chunk without doing anything else; a plugin
    that blocks for long between chunks may poll :attr:`cancelled`.
    """

    def __init__(self, callback: Callable[[int, int | None], None] | None = None,
                 cancel: Event | None = None) -> None:
        self._callback = callback
        self._cancel = cancel
        self.done = 0
        self.total: int | None = None

    @property
    def cancelled(self) -> bool:
        return self._cancel is not None and self._cancel.is_set()

    def check_cancelled(self) -> None:
        if self.cancelled:
            raise TransferCancelled("cancelled (the run is stopping)")

    def expect(self, nbytes: int) -> None:
        self.total = (self.total or 0) + max(0, int(nbytes))
        self._emit()

    def advance(self, nbytes: int) -> None:
        self.check_cancelled()
        self.done += int(nbytes)
        self._emit()

    __call__ = advance

    def _emit(self) -> None:
        if self._callback is not None:
            self._callback(self.done, self.total)


@dataclass(frozen=True)
class HostIdentity:
    """What the host lends a transfer beyond its RED file's ``access``; the framework sets
    it on each connector (:attr:`Connector.identity`) before calling anything.

    A connector never uses the account's own credentials files (``~/.netrc``, proxies from the
    environment, ``~/.ssh/known_hosts``) on its own; what it may use is said here:

    * ``known_hosts`` — the ssh host-key file for an access without ``knownHostsFile``
      (None: :func:`default_known_hosts`, faice's own file; an agency keeps one per server).
    * ``account_credentials`` — whether a request that brings no ``auth`` may be signed with
      the account's own identity (s3: the AWS credential chain). True for a local run (the
      user's own identity); False on an agency, whose account is not the user's: such a
      request goes unsigned.
    """

    known_hosts: Path | None = None
    account_credentials: bool = True

    def known_hosts_file(self) -> Path:
        return self.known_hosts if self.known_hosts is not None else default_known_hosts()


def default_known_hosts() -> Path:
    """faice's own host-key file, ``$XDG_CONFIG_HOME/faice/known_hosts`` (default
    ``~/.config/faice/known_hosts``): faice records host keys there, never in the account's
    ``~/.ssh/known_hosts``."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    return Path(base) / "faice" / "known_hosts"


class Connector:
    """Base class of every connector plugin.

    Class attributes:

    * ``names`` — the RED ``command`` values this class answers to (``("ssh",
      "red-connector-ssh")``).
    * ``access_schema`` — a JSON Schema for ``access``, or a mapping from operation
      (``receive-file`` …) to a schema when operations need different keys. The framework
      validates ``access`` against it before anything else is called, after renaming
      protected ``_key`` keys to ``key``.

    Primitives (override the ones you support; the rest are reported as unsupported):
    ``receive_file``, ``receive_dir``, ``send_file``, ``send_dir``, ``mount_dir`` (with
    ``umount_dir``). Paths are host paths. ``receive_*`` write into ``dest``, whose parent
    exists; the framework gives a temporary name and renames it once the primitive returns,
    so a plugin never needs to clean up half-written downloads. A ``listing`` (optional) is
    the CWL listing: items with ``class``, ``basename``, and ``size``/``checksum`` for files or
    a nested ``listing`` for directories.

    One instance serves a whole staging session and may be called from several threads;
    keep per-transfer state in local variables. ``timeout`` is the session's timeout in
    seconds (None = the connector's default) for connecting and for stalls. ``identity``
    (:class:`HostIdentity`) is what the host lends beyond ``access``; the framework sets it
    right after construction.
    """

    names: ClassVar[tuple[str, ...]] = ()
    access_schema: ClassVar[Mapping[str, Any]] = {"type": "object"}
    identity: HostIdentity = HostIdentity()

    def __init__(self, *, timeout: float | None = None) -> None:
        self.timeout = timeout

    # ------------------------------------------------------------------ capabilities

    @classmethod
    def capabilities(cls) -> frozenset[str]:
        """The operations this class supports: those whose primitive it overrides."""
        return frozenset(op for op, method in _PRIMITIVES.items() if cls.supports(op))

    @classmethod
    def supports(cls, operation: str) -> bool:
        method = _PRIMITIVES[operation]
        return getattr(cls, method) is not getattr(Connector, method)

    @classmethod
    def schema_for(cls, operation: str) -> Mapping[str, Any]:
        """The access schema of one operation (a per-operation mapping or the common one)."""
        schema = cls.access_schema
        if operation in schema and isinstance(schema.get(operation), Mapping):
            return schema[operation]
        return schema

    # ------------------------------------------------------------------ validation

    def validate(self, access: Access, operation: str, listing: Listing | None = None) -> None:
        """Check credentials and the remote path before any container starts.

        Called after the schema check. Raise :class:`ConnectorFailure` with a message that
        says what is wrong. The default does nothing (schema only).
        """

    # ------------------------------------------------------------------ primitives

    def receive_file(self, access: Access, dest: Path, progress: Progress) -> None:
        raise NotImplementedError

    def receive_dir(self, access: Access, dest: Path, listing: Listing | None, progress: Progress) -> None:
        raise NotImplementedError

    def send_file(self, access: Access, src: Path, progress: Progress) -> None:
        raise NotImplementedError

    def send_dir(self, access: Access, src: Path, listing: Listing | None, progress: Progress) -> None:
        raise NotImplementedError

    def mount_dir(self, access: Access, mountpoint: Path, writable: bool) -> None:
        raise NotImplementedError

    def umount_dir(self, mountpoint: Path) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release pooled connections; called once when the session closes."""


def listed_files(listing: Listing | None, prefix: str = "") -> list[tuple[str, dict[str, Any]]]:
    """Every File item of a (nested) listing with its relative path, directories first-order."""
    found: list[tuple[str, dict[str, Any]]] = []
    for item in listing or []:
        rel = f"{prefix}{item['basename']}"
        if item.get("class") == "Directory":
            found.extend(listed_files(item.get("listing"), rel + "/"))
        else:
            found.append((rel, item))
    return found


def listed_dirs(listing: Listing | None, prefix: str = "") -> list[str]:
    """Every Directory item of a (nested) listing as a relative path, parents first."""
    found: list[str] = []
    for item in listing or []:
        if item.get("class") == "Directory":
            rel = f"{prefix}{item['basename']}"
            found.append(rel)
            found.extend(listed_dirs(item.get("listing"), rel + "/"))
    return found


def safe_relative(path: str) -> str:
    """A listing/remote relative path checked to stay inside its target directory."""
    parts = [p for p in path.replace("\\", "/").split("/") if p not in ("", ".")]
    if path.startswith("/") or ".." in parts or not parts:
        raise ConnectorFailure(f"refusing path {path!r}: it would leave the target directory")
    return "/".join(parts)
