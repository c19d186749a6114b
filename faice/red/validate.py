"""``validate_red``: every problem of a RED file at once — schema, semantics, variables, sweep
and the embedded CWL tool — each with file, line, column and key path.

Order of checks: non-string keys and ``redVersion`` first (a file of an unknown RED version is
not checked further: its rules are unknown); then the ``red`` JSON Schema (RED 8 or 9 plus
faice's extensions) and the semantic checks; cwltool only looks at a ``cli`` the schema
accepted, because its messages about a malformed tool would repeat the schema's less clearly.
"""

from __future__ import annotations

import sys
from typing import Any

from faice.errors import KeyPath, Problem, ValidationError
from faice.red.load import Document
from faice.secrets import REDACTOR, Redactor

Found = tuple[KeyPath, str]


def validate_red(document: Document, *, redactor: Redactor = REDACTOR) -> None:
    """Raise :class:`ValidationError` listing every problem of ``document`` (a loaded RED file).

    Its protected values are registered with ``redactor``, since messages may quote them: the
    process's own for the command line, one of the request's own on a server that many users
    share (never the process-wide one there, or one user's output would be masked with
    another user's secrets)."""
    problems = red_problems(document, redactor=redactor)
    if problems:
        raise ValidationError(problems)


def red_problems(document: Document, *, redactor: Redactor = REDACTOR) -> list[Problem]:
    """Every problem of a loaded RED file, sorted by position in the file."""
    from faice.red import semantics
    from faice.red.limits import plain_problem
    from faice.red.load import to_plain
    from faice.red.metrics import metrics_problems
    from faice.red.schemas import schema_problems
    from faice.red.sweep import sweep_problems
    from faice.red.variables import variable_problems
    from faice.secrets import protected_values

    if not document.text:  # data that did not come through the loader's limits (the agency's JSON)
        hostile = plain_problem(document.data)
        if hostile is not None:
            return [_at(document, *hostile)]
    redactor.add_all(protected_values(document.data))  # messages may quote values
    data = to_plain(document.data)
    if not isinstance(data, dict):
        return [_at(document, (), "expected a mapping at the top level of the RED file")]
    found: list[Found] = []
    keys = [
        Problem(document.name, path, semantics.non_string_key_message(key), *_key_position(document, path, key))
        for path, key in semantics.non_string_keys(data)
    ]
    found += [(problem.path, problem.message) for problem in keys]
    version = semantics.red_version_problems(data)
    if version:
        return sorted(keys + _problems(document, version), key=_position)
    schema_found = schema_problems("red", data)
    if _mapping(data.get("container")).get("engine") == "nvidia-docker":
        schema_found = [f for f in schema_found if f[0][:1] != ("container",)]
    if "batches" in data:
        schema_found = _batches_form_hints(data, schema_found)
    metrics_found = metrics_problems(data, document.name) if "metrics" in data else []
    if metrics_found:  # its messages say more than the schema's about the same keys
        schema_found = [f for f in schema_found if f[0][:1] != ("metrics",)]
    semantic_found = semantics.semantic_problems(data)
    specific = {path for path, message in semantic_found if message.startswith("expected")}
    found += [f for f in schema_found if f[0] not in specific] + semantic_found
    found += semantics.protected_key_problems(data)
    extra: list[Problem] = variable_problems(data, document.name)
    if "sweep" in data and "batches" not in data:
        extra += sweep_problems(data, document.name)
    extra += metrics_found
    access_errors, access_warnings = _access_findings(data)
    found += access_errors
    cli = data.get("cli")
    if isinstance(cli, dict) and not any(path[:1] == ("cli",) for path, _ in schema_found + found):
        from faice.cwl.tool import cli_problems

        found += cli_problems(cli, document.name)
    _warn(_problems(document, access_warnings), redactor)
    problems = keys + _problems(document, found[len(keys) :])
    for problem in extra:
        if problem.line is None and problem.path:
            line, column = document.locate(problem.path)
            problem = Problem(problem.file, problem.path, problem.message, line, column)
        if problem not in problems:
            problems.append(problem)
    return sorted(problems, key=_position)


def _access_findings(data: dict) -> tuple[list[Found], list[Found]]:
    """Connector commands and ``access`` against each connector's schema (faice.red.access)."""
    from faice.red.access import access_findings

    return access_findings(data)


def _warn(warnings: list[Problem], redactor: Redactor) -> None:
    """Print each warning once (a command missing here may exist where the RED runs)."""
    for problem in warnings:
        sys.stderr.write(redactor.redact(f"faice: warning: {problem}") + "\n")


BATCHES_FORM_HINTS = {
    "sweep": "a sweep needs the single-batch form (top-level inputs/outputs as the template), not batches",
    "inputs": "top-level inputs are not allowed together with batches: put them into each batch",
    "outputs": "top-level outputs are not allowed together with batches: put them into each batch",
}


def _batches_form_hints(data: dict, found: list[Found]) -> list[Found]:
    """Say why ``sweep``/``inputs``/``outputs`` are wrong next to ``batches``, not just 'unknown'."""
    return [
        ((path, BATCHES_FORM_HINTS[path[0]]) if len(path) == 1 and path[0] in BATCHES_FORM_HINTS else (path, message))
        for path, message in found
    ]


def _key_position(document: Document, path: KeyPath, key: Any) -> tuple[int | None, int | None]:
    """Line and column of the key itself (its parent's path names it in the message)."""
    line, column = document.locate(path + (key,))
    return (line, column) if line is not None else document.locate(path)


def _mapping(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _at(document: Document, path: KeyPath, message: str) -> Problem:
    line, column = document.locate(path)
    return Problem(document.name, tuple(path), message, line, column)


def _problems(document: Document, found: list[Found]) -> list[Problem]:
    problems: list[Problem] = []
    for path, message in found:
        problem = _at(document, path, message)
        if problem not in problems:
            problems.append(problem)
    return problems


def _position(problem: Problem) -> tuple:
    return (problem.line is None, problem.line or 0, problem.column or 0)
