"""Read RED, CWL and variables files: JSON or YAML, from a path, ``-`` (stdin) or an http(s) URL.

YAML is read with ruamel.yaml's round-trip loader so that every later problem can point at the
line and column of the offending key. JSON is read with the standard library (fast for large
batch lists); when a problem is reported, the text is read once more with the YAML loader
(JSON is YAML) to find its line and column. Both honour the limits of :mod:`faice.red.limits`
(size, nesting, alias expansion, tags, scalars), so hostile input ends in a
:class:`~faice.errors.ParseError` naming file, line, column and key path.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field, replace
from typing import Any

from faice.errors import KeyPath, LoadError, ParseError, Problem

URL_PREFIXES = ("http://", "https://")
URL_TIMEOUT_S = (10, 30)  # connect, and each read
URL_DEADLINE_S = 120.0  # the whole download
POSITIONS_MAX_CHARS = 8 * 1024 * 1024  # larger JSON files name key paths only (reading them again is slow)
_NO_POSITIONS = object()


@dataclass
class Document:
    """A parsed file and where it came from (``name`` is what error messages show)."""

    name: str
    data: Any
    text: str = field(repr=False, default="")
    is_yaml: bool = False
    _positions: Any = field(default=None, repr=False, compare=False)

    def problems(self, found: list[tuple[KeyPath, str]]) -> list[Problem]:
        """(key path, message) pairs as problems with this document's file, line and column."""
        return [Problem(self.name, path, message, *self.locate(path)) for path, message in found]

    def locate(self, path: KeyPath) -> tuple[int | None, int | None]:
        """1-based (line, column) of the key at ``path`` when the loader kept positions."""
        node = self.data
        if getattr(node, "lc", None) is None:
            node = self._position_tree()
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

    def _position_tree(self) -> Any:
        """The text read again by the YAML loader, only for positions (JSON files)."""
        if self._positions is None:
            self._positions = _NO_POSITIONS
            if self.text and not self.is_yaml and len(self.text) <= POSITIONS_MAX_CHARS:
                from faice.red.limits import guarded_yaml

                try:
                    self._positions = guarded_yaml().load(self.text)
                except Exception:  # positions are a courtesy: never let them hide the real problem
                    self._positions = _NO_POSITIONS
        return None if self._positions is _NO_POSITIONS else self._positions


def read_text(source: str) -> tuple[str, str]:
    """Return (display name, text) of a path, ``-`` or URL, at most ``FAICE_MAX_RED_BYTES``."""
    from faice.red.limits import max_bytes

    limit = max_bytes()
    if source == "-":
        text = sys.stdin.read(limit + 1)
        if len(text.encode("utf-8", "surrogatepass")) > limit:
            raise _too_big("<stdin>", limit)
        return "<stdin>", text
    if source.startswith(URL_PREFIXES):
        return source, _decode(source, _download(source, limit))
    path = os.path.expanduser(source)
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except FileNotFoundError:
        raise LoadError(f"{source}: no such file") from None
    except IsADirectoryError:
        raise LoadError(f"{source}: is a directory, expected a JSON or YAML file") from None
    except OSError as exc:
        raise LoadError(f"{source}: cannot read: {exc.strerror}") from None
    if len(data) > limit:
        raise _too_big(source, limit)
    return source, _decode(source, data)


def _decode(name: str, data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1  # in bytes
        raise ParseError(Problem(name, (), f"not UTF-8 text ({exc.reason} at byte {exc.start})", line, column)) from None


def _too_big(name: str, limit: int) -> LoadError:
    from faice.red.limits import MAX_BYTES_ENV

    return LoadError(
        f"{name}: larger than {limit:,} bytes, the limit for one file",
        hint=f"set {MAX_BYTES_ENV} to a larger number of bytes if the file is meant to be this big",
    )


def _download(url: str, limit: int) -> bytes:
    """The body of ``url``: refused beyond ``limit`` bytes or ``URL_DEADLINE_S`` seconds."""
    import time

    import requests
    import urllib3

    deadline = time.monotonic() + URL_DEADLINE_S
    chunks: list[bytes] = []
    size = 0
    try:
        with requests.get(url, timeout=URL_TIMEOUT_S, stream=True) as response:
            response.raise_for_status()
            declared = response.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > limit:
                raise _too_big(url, limit)
            raw = response.raw
            read = getattr(raw, "read1", None) or raw.read  # read1: whatever arrived, so the deadline holds
            while True:
                chunk = read(65536, decode_content=True)
                if not chunk:
                    break
                size += len(chunk)
                if size > limit:
                    raise _too_big(url, limit)
                if time.monotonic() > deadline:
                    raise LoadError(f"{url}: could not download: not complete after {URL_DEADLINE_S:.0f} s")
                chunks.append(chunk)
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
        raise LoadError(f"{url}: could not download: {exc}") from None
    return b"".join(chunks)


def parse_text(name: str, text: str) -> Document:
    """Parse JSON (when it looks like JSON) or YAML, reporting syntax errors with line:column."""
    stripped = text.lstrip()
    if stripped.startswith(("{", "[")):
        try:
            data = json.loads(text, object_pairs_hook=_unique_keys)
        except json.JSONDecodeError as exc:
            if stripped.startswith("["):
                raise _json_error(name, exc) from None
            # JSON is a subset of YAML, but a YAML flow mapping may not be JSON: fall through.
            json_error = exc
        except (ValueError, RecursionError):  # a huge integer, nesting too deep, a repeated key
            return _parse_yaml(name, text, None, plain=True)
        else:
            from faice.red.limits import plain_problem

            found = plain_problem(data)
            if found is not None:  # the YAML loader finds the same problem, with its position
                try:
                    _parse_yaml(name, text, None, plain=True)
                except ParseError as exc:
                    problem = exc.problem
                    raise ParseError(replace(problem, path=problem.path or found[0])) from None
                raise ParseError(Problem(name, found[0], found[1]))
            return Document(name, data, text)
    else:
        json_error = None
    return _parse_yaml(name, text, json_error)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object as a dict, refusing a repeated key (the YAML loader then reports it where
    it is, as it does for YAML): json.loads would keep the last value silently."""
    data = dict(pairs)
    if len(data) != len(pairs):
        raise ValueError("duplicate key")
    return data


def _json_error(name: str, exc: json.JSONDecodeError) -> ParseError:
    return ParseError(Problem(name, (), f"invalid JSON: {exc.msg}", exc.lineno, exc.colno))


def _parse_yaml(name: str, text: str, json_error: json.JSONDecodeError | None, *, plain: bool = False) -> Document:
    from ruamel.yaml.error import MarkedYAMLError, YAMLError

    from faice.red.limits import LimitError, guarded_yaml

    try:
        data = guarded_yaml().load(text)
    except MarkedYAMLError as exc:
        if json_error is not None and not isinstance(exc, LimitError):
            raise _json_error(name, json_error) from None
        raise _yaml_error(name, text, exc) from None
    except YAMLError as exc:
        position = getattr(exc, "position", None)  # ReaderError: a character YAML does not allow
        character = getattr(exc, "character", None)
        if isinstance(position, int) and isinstance(character, int):
            line = text.count("\n", 0, position) + 1
            column = position - (text.rfind("\n", 0, position) + 1) + 1
            message = f"invalid YAML: character U+{character:04X} is not allowed ({getattr(exc, 'reason', '')})"
            raise ParseError(Problem(name, (), message, line, column)) from None
        raise ParseError(Problem(name, (), f"invalid YAML: {exc}")) from None
    except RecursionError:  # not expected with the nesting limit; never an internal error
        raise ParseError(Problem(name, (), "nested too deeply to read")) from None
    if plain:
        from faice.red.limits import plain_problem

        found = plain_problem(data)
        if found is not None:
            raise ParseError(Problem(name, found[0], found[1]))
    return Document(name, data, text, is_yaml=True)


def _yaml_error(name: str, text: str, exc: Any) -> ParseError:
    """Where the parser gave up, and — when it differs — where the construct began."""
    from faice.red.limits import LimitError

    mark = exc.problem_mark or exc.context_mark
    line, column = (mark.line + 1, mark.column + 1) if mark else (None, None)
    if isinstance(exc, LimitError):
        path = exc.key_path or (_path_at(text, mark) if mark else ())
        return ParseError(Problem(name, path, exc.problem, line, column))
    message = f"invalid YAML: {exc.problem or exc.context or 'syntax error'}"
    context = exc.context_mark
    if exc.problem and exc.context and context is not None and mark is not None and (context.line, context.column) != (mark.line, mark.column):
        message += f" ({exc.context} that began at line {context.line + 1}, column {context.column + 1})"
    elif exc.problem and exc.context:
        message += f" ({exc.context})"
    return ParseError(Problem(name, (), message, line, column))


def _path_at(text: str, mark: Any) -> KeyPath:
    """The key path of the node that starts at ``mark`` (for errors raised while constructing)."""
    from ruamel.yaml.nodes import MappingNode, SequenceNode

    from faice.red.limits import guarded_yaml

    try:
        node = guarded_yaml().compose(text)
    except Exception:  # the path is a courtesy
        return ()
    stack: list[tuple[Any, KeyPath]] = [(node, ())]
    while stack:
        node, path = stack.pop()
        if node.start_mark.index == mark.index:
            return path
        if isinstance(node, MappingNode):
            for key, value in node.value:
                label = key.value if isinstance(key.value, str) else str(key.value)
                stack.append((key, path))
                stack.append((value, path + (label,)))
        elif isinstance(node, SequenceNode):
            stack.extend((item, path + (index,)) for index, item in enumerate(node.value))
    return ()


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


def located(data: Any, source: str, found: list[tuple[KeyPath, str]]) -> list[Problem]:
    """Problems found in ``data`` (loaded from ``source``) with their lines and columns."""
    return Document(source, data).problems(found)
