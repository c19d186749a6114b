"""Finding the connector for a RED ``command``: plugins first, then programs on PATH.

Plugins register under the entry-point group ``faice.connectors.v1``, one entry per
``command`` name. A name is resolved by its own entry point, so only that plugin is imported
(``faice --help`` never pays for boto3 or asyncssh). Only when no entry point has the name
are the plugins loaded to look at their ``names``. Any other command found on the host PATH
is an external connector speaking the RED connector CLI 1 protocol.
"""

from __future__ import annotations

import re
import shutil
import threading
from collections.abc import Collection
from importlib import metadata

from faice.connectors.api import Connector, HostIdentity
from faice.errors import ConnectorError

GROUP = "faice.connectors.v1"

_lock = threading.Lock()
_loaded: dict[str, type[Connector]] = {}
_broken: dict[str, str] = {}

# A program name as a RED file may give it: no options, no whitespace or control characters.
_PROGRAM_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,127}")
_PROGRAM_PATH = re.compile(r"(/[A-Za-z0-9_.+-]+)+")


def check_command_name(command: str, allowed_paths: Collection[str] | None = None) -> str | None:
    """Why ``command`` may not name an external program (None: it may).

    A bare name is looked up on PATH. A path (with ``/``) must be absolute and without
    ``..``; where ``allowed_paths`` is given (a policy's externalPrograms), only those."""
    if _PROGRAM_NAME.fullmatch(command):
        return None
    if "/" in command and _PROGRAM_PATH.fullmatch(command) and "/../" not in command + "/":
        if allowed_paths is None or command in allowed_paths:
            return None
        return (f"connector command {command!r} is a path; only these program paths are allowed "
                f"here: {', '.join(sorted(p for p in allowed_paths if '/' in p)) or 'none'}")
    return (f"connector command {command[:200]!r} is neither a connector name nor a program name "
            "(letters, digits, _ . + -, not starting with -) nor an absolute program path")


def _entry_points() -> list[metadata.EntryPoint]:
    return list(metadata.entry_points(group=GROUP))


def _load(entry: metadata.EntryPoint) -> type[Connector]:
    try:
        cls = entry.load()
    except Exception as exc:  # a broken third-party plugin must not look like a faice bug
        raise ConnectorError(
            f"connector plugin {entry.name!r} ({entry.value}) cannot be loaded: {type(exc).__name__}: {exc}"
        ) from exc
    if not (isinstance(cls, type) and issubclass(cls, Connector)):
        raise ConnectorError(
            f"connector plugin {entry.name!r} ({entry.value}) is not a subclass of faice.connectors.Connector"
        )
    return cls


def plugin_class(command: str) -> type[Connector] | None:
    """The plugin class answering to ``command``, or None when no plugin does."""
    with _lock:
        if command in _loaded:
            return _loaded[command]
        entries = _entry_points()
        for entry in entries:
            if entry.name == command:
                cls = _load(entry)
                _loaded[command] = cls
                return cls
        for entry in entries:  # aliases only known from the classes' ``names``
            try:
                cls = _load(entry)
            except ConnectorError as exc:  # one broken plugin must not hide the others
                _broken[entry.name] = exc.message
                continue
            if command in cls.names:
                _loaded[command] = cls
                return cls
    return None


def plugin_names() -> list[str]:
    """Every registered command name (entry-point names; aliases need the classes loaded)."""
    return sorted({entry.name for entry in _entry_points()})


def resolve(command: str, *, timeout: float | None = None, allowed_paths: Collection[str] | None = None,
            identity: HostIdentity | None = None, cancel: threading.Event | None = None) -> Connector:
    """A connector instance for ``command``: a plugin, or an external program on PATH
    (checked by :func:`check_command_name` first); ``identity``: what the host lends it;
    ``cancel``: the session's, at which an external program is ended."""
    cls = plugin_class(command)
    if cls is not None:
        connector = cls(timeout=timeout)
        if identity is not None:
            connector.identity = identity
        return connector
    problem = check_command_name(command, allowed_paths) if command else None
    if problem:
        raise ConnectorError(problem)
    program = shutil.which(command) if command else None
    if program:
        from faice.connectors.external import ExternalConnector

        return ExternalConnector(command, program, timeout=timeout, cancel=cancel)
    broken = "".join(f"\n  (plugin not loadable: {text})" for text in _broken.values())
    raise ConnectorError(
        f"unknown connector command {command!r}: no faice.connectors.v1 plugin answers to it "
        f"(known: {', '.join(plugin_names()) or 'none'}) and it is not a program on PATH{broken}"
    )


def access_schemas() -> dict[str, dict[str, object]]:
    """``{command: {operation: JSON Schema}}`` for every plugin (for ``faice schema``)."""
    from faice.connectors.api import OPERATIONS

    found: dict[str, dict[str, object]] = {}
    for name in plugin_names():
        try:
            cls = plugin_class(name)
        except ConnectorError:
            continue
        if cls is not None:
            found[name] = {op: dict(cls.schema_for(op)) for op in OPERATIONS if cls.supports(op)}
    return found
