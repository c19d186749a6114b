"""Which connectors a RED file may use on a host that is not its author's (the agency server).

Connectors run on the host, not in the batch's container, so a RED file's ``file`` path,
``command`` or missing ``s3`` credentials would otherwise reach the host's own files,
programs and cloud identity. A :class:`Policy` says what is allowed; :func:`check` lists
every connector of a RED document that breaks it, each named by its key path. The module
only reads the file system to resolve paths (symlinks included), so the checks apply
unchanged to ``faice agency serve`` and to a local ``faice exec --policy``.

Policy file (YAML or JSON, every key optional)::

    connectors: [file, http, s3, ssh]   # plugin commands allowed (default: every installed plugin)
    externalPrograms: []                # other commands (programs on PATH) allowed
    fileRoots: []                       # host directories file paths may lie under
    s3WithoutAuth: false                # s3 without auth: the host's AWS credentials on a local
                                        # run; unsigned (public buckets only) on an agency
    protectedPaths: []                  # host paths never reachable, even under a root
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from faice.errors import KeyPath, Problem, UsageError, ValidationError

_KEYS = {
    "connectors": "connectors",
    "externalPrograms": "external_programs",
    "fileRoots": "file_roots",
    "s3WithoutAuth": "s3_without_auth",
    "protectedPaths": "protected_paths",
}


@dataclass(frozen=True)
class Policy:
    """What connectors may do on this host; the defaults are the agency's safe ones."""

    connectors: tuple[str, ...] | None = None  # None: every installed plugin command
    external_programs: tuple[str, ...] = ()
    file_roots: tuple[Path, ...] = ()
    s3_without_auth: bool = False
    protected_paths: tuple[Path, ...] = field(default=())

    def protecting(self, *paths: str | os.PathLike[str] | None) -> Policy:
        """This policy with the host's own files (database, key, work dir, …) added."""
        extra = tuple(_resolve(str(p)) for p in paths if p)
        return Policy(self.connectors, self.external_programs, self.file_roots, self.s3_without_auth,
                      self.protected_paths + extra)


def load_policy(path: str) -> Policy:
    """Read a policy file; unknown keys and wrong types are a :class:`UsageError` naming them."""
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    try:
        with open(path, encoding="utf-8") as handle:
            data = YAML(typ="safe", pure=True).load(handle)
    except OSError as exc:
        raise UsageError(f"--policy {path}: cannot read: {exc.strerror or exc}") from None
    except YAMLError as exc:
        raise UsageError(f"--policy {path}: not valid YAML/JSON: {exc}") from None
    return policy_from(data if data is not None else {}, path)


def policy_from(data: Any, source: str = "policy") -> Policy:
    """A :class:`Policy` from parsed YAML/JSON (relative roots are taken from the cwd)."""
    if not isinstance(data, dict):
        raise UsageError(f"{source}: expected a mapping with keys {', '.join(_KEYS)}")
    unknown = sorted(str(k) for k in data if k not in _KEYS)
    if unknown:
        raise UsageError(f"{source}: unknown key {unknown[0]!r} (known: {', '.join(_KEYS)})")
    values: dict[str, Any] = {}
    for key, name in _KEYS.items():
        if key not in data:
            continue
        value = data[key]
        if key == "s3WithoutAuth":
            if not isinstance(value, bool):
                raise UsageError(f"{source}: {key}: expected true or false, got {value!r}")
            values[name] = value
            continue
        if key == "connectors" and value is None:
            continue
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise UsageError(f"{source}: {key}: expected a list of non-empty strings")
        if key in ("fileRoots", "protectedPaths"):
            values[name] = tuple(_resolve(v) for v in value)
        else:
            values[name] = tuple(value)
    return Policy(**values)


def _resolve(path: str) -> Path:
    """The real absolute path, as the connector will see it (``~`` expanded, links followed)."""
    return Path(os.path.realpath(os.path.expanduser(path)))


def _under(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _default_is_plugin(command: str) -> frozenset[str] | None:
    """The names of the plugin class answering to ``command`` (None: not a plugin)."""
    from faice.connectors.registry import plugin_class
    from faice.errors import ConnectorError

    try:
        cls = plugin_class(command)
    except ConnectorError:
        return None
    return frozenset(cls.names) | {command} if cls is not None else None


def check(
    policy: Policy,
    data: dict[str, Any],
    source: str = "RED data",
    *,
    plugin_names: Callable[[str], frozenset[str] | None] = _default_is_plugin,
) -> list[Problem]:
    """Every connector in ``data`` that ``policy`` refuses, as problems naming the key path."""
    problems: list[Problem] = []

    def refuse(path: KeyPath, message: str) -> None:
        problems.append(Problem(source, path, message))

    from faice.connectors.places import connector_places

    for place in connector_places(data):
        path, connector = (*place.path, "connector"), place.connector
        command = connector.get("command")
        if not isinstance(command, str) or not command:
            continue  # the RED schema reports a missing command
        raw_access = connector.get("access")
        access: dict[str, Any] = raw_access if isinstance(raw_access, dict) else {}
        names = plugin_names(command)
        if names is None:
            if command not in policy.external_programs:
                refuse((*path, "command"), f"external connector program {command!r} is not allowed on this "
                       "host (the policy's externalPrograms lists the allowed ones)")
            continue
        if policy.connectors is not None and command not in policy.connectors:
            refuse((*path, "command"), f"connector {command!r} is not allowed on this host "
                   f"(allowed: {', '.join(policy.connectors) or 'none'})")
            continue
        if "file" in names and "path" in access:
            _check_host_path(policy, (*path, "access", "path"), access["path"], refuse)
        if "ssh" in names and "knownHostsFile" in access:
            _check_host_path(policy, (*path, "access", "knownHostsFile"), access["knownHostsFile"], refuse)
        if "s3" in names and not policy.s3_without_auth and not _s3_credentials(access.get("auth")):
            refuse((*path, "access"), "s3 without auth (or with an empty key) is not allowed on this host: "
                   "on a local run it would use the host's own AWS credentials; give auth.accessKeyId and "
                   "auth.secretAccessKey")
    return problems


def _s3_credentials(auth: Any) -> bool:
    """Both s3 keys given and non-empty (boto3 reads an empty key as "not given")."""
    return isinstance(auth, dict) and all(isinstance(auth.get(k), str) and auth.get(k)
                                          for k in ("accessKeyId", "secretAccessKey"))


def _check_host_path(policy: Policy, path: KeyPath, value: Any, refuse: Callable[[KeyPath, str], None]) -> None:
    if not isinstance(value, str) or not value:
        return  # the connector's access schema reports it
    real = _resolve(value)
    if not any(_under(real, root) for root in policy.file_roots):
        roots = ", ".join(str(r) for r in policy.file_roots)
        refuse(path, f"host path {value!r} is not under an allowed root "
               f"({'allowed: ' + roots if roots else 'this host allows none; see fileRoots'})")
        return
    for protected in policy.protected_paths:
        if _under(real, protected) or _under(protected, real):
            refuse(path, f"host path {value!r} reaches files of the server itself; refused")
            return


def check_batches(
    policy: Policy,
    batches: list[tuple[dict[str, Any], dict[str, Any]]],
    source: str,
    *,
    with_batches: bool,
) -> list[Problem]:
    """:func:`check` for a local run's batches (``(inputs, outputs)`` with variables filled
    and sweeps expanded): key paths are those of the file (``inputs.x`` for a single batch,
    ``batches[i].inputs.x`` otherwise), as the agency names them."""
    if not with_batches and batches:
        inputs, outputs = batches[0]
        return check(policy, {"inputs": inputs, "outputs": outputs}, source)
    return check(policy, {"batches": [{"inputs": i, "outputs": o} for i, o in batches]}, source)


def policy_error(problems: list[Problem], policy_file: str) -> ValidationError:
    """The error ``faice exec/validate --policy`` report (one line per refused key path)."""
    return ValidationError(problems, summary=f"connectors not allowed by --policy {policy_file} "
                                             f"({len(problems)}):")
