"""The user-facing error types.

Every error a user can cause derives from :class:`FaiceError`; the CLI's single error handler
prints its message (redacted) without a traceback and exits with ``exit_code``. Anything else
is a bug and shows a traceback only with ``--debug``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

KeyPath = tuple[str | int, ...]


def format_key_path(path: Sequence[str | int]) -> str:
    """Render a key path the way users write it: ``batches[1].inputs.learning_rate``."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        elif text:
            text += f".{part}"
        else:
            text = str(part)
    return text or "(top level)"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an input file: where it is and what was expected."""

    file: str
    path: KeyPath
    message: str
    line: int | None = None  # 1-based, when the loader knows it
    column: int | None = None

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        return f"{where}: {format_key_path(self.path)}: {self.message}"


class FaiceError(Exception):
    """An error caused by input, environment or a remote service; shown without traceback."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\nhint: {self.hint}"


class UsageError(FaiceError):
    """Bad command line usage (exit code 2, like argparse)."""

    exit_code = 2


class LoadError(FaiceError):
    """A file could not be read or parsed."""


class ParseError(LoadError):
    """A file that is not well-formed (syntax, nesting, alias or size limits) at a known place.

    ``problem`` (and ``problems``, like :class:`ValidationError`) carry file, line, column and
    key path so that ``faice validate --json`` can report them like any other problem.
    """

    def __init__(self, problem: Problem, *, hint: str | None = None):
        self.problem = problem
        self.problems = [problem]
        where = problem.file
        if problem.line is not None:
            where += f":{problem.line}" + (f":{problem.column}" if problem.column is not None else "")
        at = f" (at {format_key_path(problem.path)})" if problem.path else ""
        super().__init__(f"{where}: {problem.message}{at}", hint=hint)


class ValidationError(FaiceError):
    """One or more problems in a RED/CWL file; all of them are reported at once."""

    def __init__(self, problems: Iterable[Problem], *, summary: str | None = None):
        self.problems = list(problems)
        files = sorted({p.file for p in self.problems})
        head = summary or (
            f"{', '.join(files) or 'input'} is not valid "
            f"({len(self.problems)} problem{'s' if len(self.problems) != 1 else ''}):"
        )
        super().__init__(head + "".join(f"\n  {p}" for p in self.problems))


class VariableError(FaiceError):
    """``{{variables}}`` that could not be resolved."""


class ConnectorError(FaiceError):
    """A connector failed to move data; the message says which input/output and why.

    ``transient`` marks a failure that may go away when tried again (dropped connection,
    HTTP 503): ``faice exec --retries`` runs such a batch again, never a permanent one.
    """

    def __init__(self, message: str, *, hint: str | None = None, transient: bool = False):
        super().__init__(message, hint=hint)
        self.transient = transient


class EngineError(FaiceError):
    """The execution engine (Docker, the agency, Slurm) could not do what was asked."""


def describe(value: Any) -> str:
    """``string 'abc'``, ``integer 5``, ``a mapping``: how a user's value is shown in messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {'true' if value else 'false'}"
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        return f"number {value!r}"
    if isinstance(value, str):
        text = value if len(value) <= 60 else value[:57] + "..."
        return f"string {text!r}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"a {type(value).__name__}"


def kind_of(value: Any) -> str:
    """A value's type in a message about a malformed part (``nothing`` for a missing one)."""
    return "nothing" if value is None else type(value).__name__
