"""RED's cli types (``File[]?``, ``float``, …): parsed, and a value checked against one.

Shared by RED validation (:mod:`faice.red.semantics`, sweeps) and the CWL binding
(:mod:`faice.cwl.binding`), so a value is judged the same way before and after it is bound.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from faice.errors import describe

BASE_TYPES = ("File", "Directory", "string", "int", "long", "float", "double", "boolean")


@dataclass(frozen=True)
class CliType:
    """A RED cli type string split up: ``File[]?`` → base File, array, optional."""

    base: str
    array: bool
    optional: bool

    def __str__(self) -> str:
        return self.base + ("[]" if self.array else "") + ("?" if self.optional else "")


def parse_cli_type(text: Any) -> CliType | None:
    """The parsed type, or None when ``text`` is not one of RED's 32 type strings."""
    if not isinstance(text, str):
        return None
    optional = text.endswith("?")
    rest = text[:-1] if optional else text
    array = rest.endswith("[]")
    base = rest[:-2] if array else rest
    return CliType(base, array, optional) if base in BASE_TYPES else None


# Avro's ranges, which cwltool enforces for CWL ``int`` and ``long``.
INT_RANGES = {"int": (-(2**31), 2**31 - 1), "long": (-(2**63), 2**63 - 1)}

_SCALAR_WORDS = {
    "string": "a string",
    "int": "an integer",
    "long": "an integer",
    "float": "a number",
    "double": "a number",
    "boolean": "a boolean (true or false)",
}


def _scalar_problem(base: str, value: Any) -> tuple[str, str] | None:
    """(expected, got) when ``value`` does not fit the non-array type ``base``."""
    if base in ("File", "Directory"):
        if not isinstance(value, dict):
            return f"a {base} object ({{class: {base}, connector: ...}})", describe(value)
        found = value.get("class")
        if found != base:
            return f"class {base}", (f"class {found}" if isinstance(found, str) else "no class")
        return None
    fits = {
        "string": isinstance(value, str),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "long": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        "double": isinstance(value, (int, float)) and not isinstance(value, bool),
        "boolean": isinstance(value, bool),
    }[base]
    if not fits:
        return _SCALAR_WORDS[base], describe(value)
    if base in INT_RANGES and not INT_RANGES[base][0] <= value <= INT_RANGES[base][1]:
        low, high = INT_RANGES[base]
        return f"an integer from {low} to {high}", describe(value)
    return None


def check_value(cli_type: str, value: Any) -> str | None:
    """None when ``value`` fits the RED cli type (``"float"``, ``"File[]?"``), else the
    ``expected …, got …`` message. ``None`` fits every optional type (the input is left out)."""
    parsed = parse_cli_type(cli_type)
    if parsed is None:
        return f"cannot check the value: {cli_type!r} is not a RED cli type"
    if value is None:
        return None if parsed.optional else f"expected a value (cli type {cli_type} is not optional), got null"
    if parsed.array:
        if not isinstance(value, list):
            return f"expected a list (cli type {cli_type}), got {describe(value)}"
        for index, item in enumerate(value):
            problem = _scalar_problem(parsed.base, item)
            if problem:
                expected, got = problem
                return f"item {index}: expected {expected} (cli type {cli_type}), got {got}"
        return None
    if isinstance(value, list):
        return f"expected {_SCALAR_WORDS.get(parsed.base, 'a ' + parsed.base)} (cli type {cli_type}), got a list"
    problem = _scalar_problem(parsed.base, value)
    if problem:
        expected, got = problem
        return f"expected {expected} (cli type {cli_type}), got {got}"
    return None
