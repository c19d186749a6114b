"""Read RED, CWL and variables files: JSON or YAML, from a path, ``-`` (stdin) or an http(s) URL.

YAML is read with ruamel.yaml's round-trip loader so that every later problem can point at the
line and column of the offending key; JSON is read with the standard library (fast for large
batch lists) and problems then name the key path only.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from typing import Any

from faice.errors import KeyPath, LoadError

URL_PREFIXES = ("http://", "https://")


@dataclass
class Document:
    """A parsed file and where it came from (``name`` is what error messages show)."""

    name: str
    data: Any
    text: str = field(repr=False, default="")
    is_yaml: bool = False

    def locate(self, path: KeyPath) -> tuple[int | None, int | None]:
        """1-based (line, column) of the key at ``path`` when the loader kept positions."""
        node = self.data
        line = column = None
        for part in path:
            lc = getattr(node, "lc", None)
            try:
                if lc is not None:
                    if isinstance(part, int):
                        line, column = lc.item(part)
                    else:
                        line, column = lc.key(part)
                    line, column = line + 1, column + 1
                node = node[part]
            except (KeyError, IndexError, TypeError, AttributeError):
                break
        return line, column


def read_text(source: str) -> tuple[str, str]:
    """Return (display name, text) of a path, ``-`` or URL."""
    if source == "-":
        return "<stdin>", sys.stdin.read()
    if source.startswith(URL_PREFIXES):
        import requests

        try:
            response = requests.get(source, timeout=(10, 60))
            response.raise_for_status()
        except requests.RequestException as exc:
            raise LoadError(f"{source}: could not download: {exc}") from None
        return source, response.text
    path = os.path.expanduser(source)
    try:
        with open(path, encoding="utf-8") as handle:
            return source, handle.read()
    except FileNotFoundError:
        raise LoadError(f"{source}: no such file") from None
    except IsADirectoryError:
        raise LoadError(f"{source}: is a directory, expected a JSON or YAML file") from None
    except UnicodeDecodeError as exc:
        raise LoadError(f"{source}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise LoadError(f"{source}: cannot read: {exc.strerror}") from None


def parse_text(name: str, text: str) -> Document:
    """Parse JSON (when it looks like JSON) or YAML, reporting syntax errors with line:column."""
    stripped = text.lstrip()
    if stripped.startswith(("{", "[")):
        try:
            return Document(name, json.loads(text), text)
        except json.JSONDecodeError as exc:
            if stripped.startswith("["):
                raise LoadError(f"{name}:{exc.lineno}:{exc.colno}: invalid JSON: {exc.msg}") from None
            # JSON is a subset of YAML, but a YAML flow mapping may not be JSON: fall through.
            json_error = exc
    else:
        json_error = None
    return _parse_yaml(name, text, json_error)


def _parse_yaml(name: str, text: str, json_error: json.JSONDecodeError | None) -> Document:
    from ruamel.yaml import YAML
    from ruamel.yaml.error import MarkedYAMLError, YAMLError

    yaml = YAML(typ="rt")
    yaml.allow_duplicate_keys = False
    try:
        data = yaml.load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{name}:{mark.line + 1}:{mark.column + 1}" if mark else name
        if json_error is not None:
            raise LoadError(
                f"{name}:{json_error.lineno}:{json_error.colno}: invalid JSON: {json_error.msg}"
            ) from None
        problem = exc.problem or exc.context or "syntax error"
        raise LoadError(f"{where}: invalid YAML: {problem}") from None
    except YAMLError as exc:
        raise LoadError(f"{name}: invalid YAML: {exc}") from None
    return Document(name, data, text, is_yaml=True)


def load_document(source: str) -> Document:
    name, text = read_text(source)
    return parse_text(name, text)


def load_mapping(source: str, what: str = "file") -> Document:
    """Load a document whose top level must be a mapping (RED, CWL, variables files)."""
    document = load_document(source)
    if not isinstance(document.data, dict):
        kind = "empty" if document.data is None else type(document.data).__name__
        raise LoadError(f"{document.name}: expected a mapping at the top level of the {what}, got {kind}")
    return document


def to_plain(data: Any) -> Any:
    """Convert ruamel's round-trip containers and scalars into plain dict/list/str/int/float."""
    if isinstance(data, dict):
        return {to_plain(k): to_plain(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [to_plain(v) for v in data]
    if isinstance(data, bool) or data is None:
        return data
    if isinstance(data, str):
        return str(data)
    if isinstance(data, int):
        return int(data)
    if isinstance(data, float):
        return float(data)
    return data
