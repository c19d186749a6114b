"""Untrusted text made safe for where it goes: a terminal, a log line, a Markdown table, CSV, MLflow.

Metric names, log lines, failure messages and request paths come from images, programs and
remote users. Printed as they are, an escape sequence in them retitles the window, clears the
screen or hides lines; a newline forges a log line; a ``|`` breaks a Markdown table; a cell
starting with ``=`` runs as a formula in a spreadsheet; a name MLflow refuses ends an export.
Every function here keeps the text readable and shows what it escaped (``\\x1b``, ``\\n``),
so nothing is silently lost and nothing acts on the reader.
"""

from __future__ import annotations

import posixpath
import re
from typing import Any

# C0 and C1 controls and DEL; Unicode format characters that reorder or hide text (bidi
# overrides and isolates, zero-width characters, the BOM, interlinear annotations); line and
# paragraph separators; lone surrogates (undecodable bytes kept by ``surrogateescape``, which
# a terminal's encoder refuses).
_UNICODE_CONTROLS = "\x7f-\x9f\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff\ufff9-\ufffb\ud800-\udfff"
_ANY_CONTROL = re.compile(f"[\x00-\x1f{_UNICODE_CONTROLS}]")
_CONTROL_BUT_LINES = re.compile(f"[\x00-\x08\x0b-\x1f{_UNICODE_CONTROLS}]")  # keeps \t and \n
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# What MLflow accepts in a metric or parameter name (mlflow.utils.validation), and its length limit.
_MLFLOW_REFUSED = re.compile(r"[^\w.\- /]")
MLFLOW_NAME_LIMIT = 250
# Leading characters a spreadsheet reads as a formula (OWASP: CSV injection).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _visible(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def for_terminal(text: Any, *, lines: bool = False) -> str:
    """``text`` with every control character and escape sequence shown as ``\\xNN`` (``\\n``,
    ``\\t``, ``\\r`` by name). With ``lines``, newlines and tabs are kept (a multi-line
    message); otherwise the result is one line."""
    text = text if isinstance(text, str) else str(text)
    pattern = _CONTROL_BUT_LINES if lines else _ANY_CONTROL
    return pattern.sub(_visible, text)


def log_line(text: Any) -> str:
    """``text`` as part of one log line: no control character, so it cannot end the line,
    forge a next one or act on a terminal that shows the log."""
    return for_terminal(text)


def markdown_cell(text: Any) -> str:
    """``text`` as one cell of a Markdown table: one line, and ``\\``, ``|``, backticks and
    ``<`` escaped, so it can neither end the cell or row, open code spans nor start HTML."""
    text = text if isinstance(text, str) else str(text)
    text = text.replace("\\", "\\\\").replace("|", "\\|").replace("`", "\\`").replace("<", "&lt;")
    return for_terminal(text)


def csv_cell(value: Any) -> Any:
    """A CSV cell: numbers and booleans unchanged; text in one line with a ``'`` before a
    leading ``=``, ``+``, ``-`` or ``@`` (a spreadsheet would run it as a formula)."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    text = for_terminal(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


def mlflow_name(name: Any) -> str | None:
    """``name`` as MLflow accepts a metric or parameter name: characters it refuses become
    ``_``, a name that reads as another path (``a//b``, ``../x``) loses its ``/``; None when
    nothing usable is left (empty, or longer than MLflow allows: the caller skips it and says so)."""
    text = name if isinstance(name, str) else str(name)
    mapped = _MLFLOW_REFUSED.sub("_", text)
    if not _mlflow_path_unique(mapped):
        mapped = mapped.replace("/", "_")
    if mapped and not _mlflow_path_unique(mapped):
        mapped = "_" + mapped  # ".", ".." and names starting with ".."
    if not mapped or len(mapped) > MLFLOW_NAME_LIMIT:
        return None
    return mapped


def _mlflow_path_unique(name: str) -> bool:
    """MLflow stores names as file paths and refuses one that normalises to another."""
    normal = posixpath.normpath(name)
    return normal == name and normal != "." and not normal.startswith(("..", "/"))
