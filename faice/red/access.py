"""Static checks of every connector in a RED file: the ``command`` names a connector, the
connector can do what the file asks of it, and ``access`` fits that connector's own JSON Schema.

Each place in the file is checked once — a sweep's template once, not once per batch — and
every problem is reported, so ``faice validate`` finds a typo (``pat:`` for ``path:``), an
unknown connector (``command: fiel``) or a number where a string belongs without any variable
value or network access. Values that are filled later (``{{variables}}``, ``$(sweep.x)``) are
not judged. A command that is no plugin and not on this machine's PATH is only a warning when it
does not look like a typo of a known connector: the file may be meant for another machine.
"""

from __future__ import annotations

import difflib
import re
import shutil
from collections.abc import Iterator
from typing import Any

from faice.connectors.places import ConnectorPlace, connector_places
from faice.errors import KeyPath

Found = tuple[KeyPath, str]

TEMPLATE = re.compile(r"\{\{|\$\(sweep\.")


def access_findings(data: dict) -> tuple[list[Found], list[Found]]:
    """(errors, warnings) as (key path, message) for every connector of the plain RED ``data``."""
    errors: list[Found] = []
    warnings: list[Found] = []
    validators: dict[tuple[str, str], Any] = {}  # one per connector and operation, for long batch lists
    for place in connector_places(data):
        _check(place, errors, warnings, validators)
    return errors, warnings


# ---------------------------------------------------------------- checks


def _check(place: ConnectorPlace, errors: list[Found], warnings: list[Found], validators: dict) -> None:
    from faice.errors import ConnectorError

    connector = place.connector
    command = connector.get("command")
    if not isinstance(command, str) or not command or TEMPLATE.search(command):
        return  # the RED schema reports a missing command; a sweep may fill it
    where = place.path + ("connector",)
    try:
        from faice.connectors.registry import plugin_class

        cls = plugin_class(command)
    except ConnectorError as exc:
        errors.append((where + ("command",), exc.message))
        return
    if cls is None:
        _unknown(command, where + ("command",), errors, warnings)
        return
    operation = place.operation
    if not cls.supports(operation):
        supported = ", ".join(sorted(cls.capabilities())) or "nothing"
        errors.append((where + ("command",), f"connector {command!r} cannot {operation} (it supports: {supported})"))
        return
    access = connector.get("access")
    if isinstance(access, dict):
        key = (command, operation)
        if key not in validators:
            from jsonschema import Draft202012Validator

            validators[key] = Draft202012Validator(cls.schema_for(operation))
        errors += _schema_problems(validators[key], access, where + ("access",))


EXTERNAL_PREFIX = "red-connector-"


def _unknown(command: str, where: KeyPath, errors: list[Found], warnings: list[Found]) -> None:
    from faice.connectors.registry import plugin_names

    if shutil.which(command):
        return  # an external connector program (RED connector CLI); its access is its own business
    known = plugin_names()
    # Compared without upstream's "red-connector-" prefix: that shared prefix would make every
    # external program named by upstream's convention look like a typo of a built-in.
    stems: dict[str, str] = {}
    for name in sorted(known, key=len):  # "http" is suggested rather than "red-connector-http"
        stems.setdefault(name.removeprefix(EXTERNAL_PREFIX), name)
    matches = difflib.get_close_matches(command.lower().removeprefix(EXTERNAL_PREFIX), list(stems), n=3, cutoff=0.6)
    close = list(dict.fromkeys(stems[m] for m in matches))
    if close:  # a typo of a known connector, not a program meant for another machine
        suggestion = " or ".join(repr(c) for c in close)
        errors.append((where, f"unknown connector {command!r}; did you mean {suggestion}? (known: {', '.join(known)})"))
        return
    warnings.append((
        where,
        f"connector {command!r} is no faice connector plugin (known: {', '.join(known) or 'none'}) and no program "
        "on this machine's PATH; the batch fails unless it runs where that program is installed",
    ))


def _schema_problems(validator: Any, access: dict, where: KeyPath) -> list[Found]:
    """``access`` against the connector's schema, with ``_key`` read as ``key`` (as at run time)
    and paths that name the keys as written in the file."""
    from faice.secrets import normalise_protected_keys

    found: list[Found] = []
    for error in _relevant(validator.iter_errors(normalise_protected_keys(access))):
        found.append(_describe(error, access, where))
    return sorted(set(found), key=lambda f: [str(p) for p in f[0]])


def _relevant(errors: Any) -> Iterator[Any]:
    """Errors about values known now: not about ``{{variables}}`` or ``$(sweep.x)``; for
    ``oneOf``/``anyOf`` the errors of the closest alternative, which say what to fix."""
    for error in errors:
        if _templated(error.instance):
            continue
        if error.validator in ("oneOf", "anyOf") and error.context:
            branches: dict[Any, list[Any]] = {}
            for sub in error.context:
                branches.setdefault(sub.schema_path[0] if sub.schema_path else 0, []).append(sub)
            closest = min(branches.values(), key=len)
            inner = [sub for sub in closest if not _templated(sub.instance)]
            if len(inner) < len(closest):
                continue  # the closest form only fails on values filled later
            yield from inner
            continue
        yield error


def _templated(value: Any) -> bool:
    return isinstance(value, str) and TEMPLATE.search(value) is not None


def _describe(error: Any, access: dict, where: KeyPath) -> Found:
    from faice.connectors.staging import explain_schema_error

    path = _written_path(access, list(error.absolute_path))
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = set(error.schema.get("properties") or {})
        extra = sorted((k for k in error.instance if k not in allowed), key=str)
        if len(extra) == 1:  # point at the unknown key itself
            path = _written_path(access, list(error.absolute_path) + extra)
    return where + tuple(path), explain_schema_error(error)


def _written_path(access: Any, path: list[Any]) -> list[Any]:
    """``path`` in normalised keys → the keys as the file spells them (``_password``)."""
    written: list[Any] = []
    node = access
    for part in path:
        if isinstance(node, dict) and isinstance(part, str) and part not in node and "_" + part in node:
            part = "_" + part
        written.append(part)
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            node = None
    return written
