"""Limits on what a loaded RED, CWL or variables file may contain, so hostile input ends in a
clear error instead of a hang, a memory bomb or a RecursionError.

* size: at most ``FAICE_MAX_RED_BYTES`` bytes (64 MiB by default) are read, also from a URL;
* nesting: at most :data:`MAX_DEPTH` levels (a real RED file needs about 10; listings of deep
  directory trees a few dozen);
* values: at most ``FAICE_MAX_RED_VALUES`` values (10,000 by default) once ``*alias``
  references are expanded (the 907-byte "billion laughs" file would have 10⁹; a 1 MB file
  with a 100,000-element list took seconds to load and check), and no alias inside its own
  anchor (a cycle). The count stops the parse at the first value past the limit; and the text
  the aliases repeat may not make the expanded file larger than ``FAICE_MAX_RED_BYTES`` (a
  1 MB string aliased 9,000 times is 9,000 values but 9 GB once copied or printed);
* scalars: standard YAML tags only (``!!binary``, ``!!set``, ``!custom`` are refused), integers of
  at most about 100 digits, no lone surrogates (they cannot be printed or sent as UTF-8), and
  values a tag cannot hold (``!!float abc``) are reported where they are.

The ruamel.yaml classes here are installed into a round-trip ``YAML()`` by :func:`guarded_yaml`;
:func:`plain_problem` checks data read by the JSON parser the same way.
"""

from __future__ import annotations

import os
import re
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.composer import Composer
from ruamel.yaml.constructor import RoundTripConstructor
from ruamel.yaml.error import MarkedYAMLError
from ruamel.yaml.events import AliasEvent
from ruamel.yaml.nodes import MappingNode, ScalarNode, SequenceNode
from ruamel.yaml.scanner import RoundTripScanner

from faice.errors import KeyPath

MAX_DEPTH = 100
DEFAULT_MAX_VALUES = 10_000
MAX_VALUES_ENV = "FAICE_MAX_RED_VALUES"
MAX_INT_BITS = 333  # about 100 decimal digits
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
MAX_BYTES_ENV = "FAICE_MAX_RED_BYTES"
SURROGATE = re.compile("[\ud800-\udfff]")
_CORE = "tag:yaml.org,2002:"
TAG_WORDS = {_CORE + "int": "integer", _CORE + "float": "number", _CORE + "bool": "boolean", _CORE + "timestamp": "date or time"}
TOO_MANY_DIGITS = "integer has more than 100 digits"
SHOWN_PATH = 8  # key path elements shown for a too-deep value
ALLOWED_TAGS = frozenset(_CORE + name for name in ("str", "int", "float", "bool", "null", "timestamp", "map", "seq", "merge"))


def _limit_from_env(name: str, default: int) -> int:
    """The whole number in environment variable ``name`` (at least 1), or ``default`` when it is
    unset or not a number."""
    text = os.environ.get(name, "").strip()
    try:
        return max(1, int(text)) if text else default
    except ValueError:
        return default


def max_bytes() -> int:
    """The size limit for one file: ``FAICE_MAX_RED_BYTES`` or 64 MiB."""
    return _limit_from_env(MAX_BYTES_ENV, DEFAULT_MAX_BYTES)


def max_values() -> int:
    """The most values one file may hold: ``FAICE_MAX_RED_VALUES`` or 10,000."""
    return _limit_from_env(MAX_VALUES_ENV, DEFAULT_MAX_VALUES)


def too_many_values(limit: int) -> str:
    return (f"the file holds more than {limit:,} values (lists and mappings counted value by value); "
            f"faice refuses larger files ({MAX_VALUES_ENV} raises the limit)")


class LimitError(MarkedYAMLError):
    """A limit of this module, at a mark and (when known) a key path."""

    def __init__(self, problem: str, mark: Any, key_path: KeyPath = ()):
        super().__init__(problem=problem, problem_mark=mark)
        self.key_path = key_path


class GuardedScanner(RoundTripScanner):
    """ruamel's scanner refusing deep ``[``/``{`` nesting as soon as it sees it: its look-ahead
    over open brackets costs time quadratic in their number (seconds at a few thousand)."""

    def fetch_flow_collection_start(self, TokenClass: Any, to_push: Any) -> None:
        if self.flow_level >= MAX_DEPTH:
            raise LimitError(f"nested deeper than {MAX_DEPTH} levels", self.reader.get_mark())
        super().fetch_flow_collection_start(TokenClass, to_push)


class GuardedComposer(Composer):
    """ruamel's composer with nesting and alias-expansion limits and the key path of each node.

    ``_values`` counts the values of the fully expanded document as it is composed: one per
    node, plus the expanded size of the anchored node at each alias, so a bomb is refused at
    the first alias that crosses the limit, long before anything is expanded.
    """

    def __init__(self, loader: Any = None) -> None:
        super().__init__(loader)
        self.warn_double_anchors = False  # YAML allows it (the later one counts); no Python warning text
        self._sizes: dict[int, int] = {}
        self._alias_values = 0
        self._max_values = max_values()
        self._chars: dict[int, int] = {}  # characters of the scalars below each node, aliases expanded
        self._total_chars = 0
        self._max_chars = max_bytes()
        self._depth = 0
        self._path: list[str | int] = []

    def compose_node(self, parent: Any, index: Any) -> Any:
        part = _part(parent, index)
        if part is not None:
            self._path.append(part)
        try:
            return self._compose(parent, index)
        finally:
            if part is not None:
                self._path.pop()

    def _compose(self, parent: Any, index: Any) -> Any:
        event = self.parser.peek_event()
        if isinstance(event, AliasEvent):
            target = self.anchors.get(event.anchor)
            if target is not None:
                size = self._sizes.get(id(target))
                if size is None:
                    raise LimitError(
                        f"alias *{event.anchor} refers to the value that contains it (a cycle)",
                        event.start_mark,
                        tuple(self._path),
                    )
                self._alias_values += size
                if self._alias_values + len(self._sizes) > self._max_values:
                    raise LimitError(
                        f"aliases expand the file to more than {self._max_values:,} values "
                        f"(at *{event.anchor}); refusing a possible alias bomb",
                        event.start_mark,
                        tuple(self._path),
                    )
                self._total_chars += self._chars[id(target)]
                if self._total_chars > self._max_chars:
                    raise LimitError(
                        f"aliases expand the file to more than {self._max_chars:,} characters "
                        f"(at *{event.anchor}); refusing a possible alias bomb ({MAX_BYTES_ENV} raises the limit)",
                        event.start_mark,
                        tuple(self._path),
                    )
            return super().compose_node(parent, index)
        if self._alias_values + len(self._sizes) >= self._max_values:
            raise LimitError(too_many_values(self._max_values), event.start_mark, tuple(self._path[:SHOWN_PATH]))
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise LimitError(f"nested deeper than {MAX_DEPTH} levels", event.start_mark, tuple(self._path[:SHOWN_PATH]))
        before = self._alias_values + len(self._sizes)
        chars_before = self._total_chars
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        self._sizes[id(node)] = self._alias_values + len(self._sizes) + 1 - before
        if isinstance(node, ScalarNode):
            self._total_chars += len(node.value)
        self._chars[id(node)] = self._total_chars - chars_before
        return node


def _part(parent: Any, index: Any) -> str | int | None:
    """The key path element of a node composed as ``parent[index]`` (None for mapping keys)."""
    if isinstance(parent, SequenceNode) and isinstance(index, int):
        return index
    if isinstance(parent, MappingNode) and isinstance(index, ScalarNode):
        return index.value
    return None


class GuardedConstructor(RoundTripConstructor):
    """Round-trip construction that refuses unusual tags, mappings or lists as keys, and
    unreadable or hostile scalars."""

    def construct_mapping(self, node: Any, maptyp: Any, deep: bool = False) -> Any:  # type: ignore[override]
        for key, _value in node.value:
            if not isinstance(key, ScalarNode):
                raise LimitError("a key must be plain text or a number, not a mapping or a list", key.start_mark)
        return super().construct_mapping(node, maptyp, deep=deep)

    def construct_non_recursive_object(self, node: Any, tag: str | None = None) -> Any:
        name = str(tag or node.tag)
        if name not in ALLOWED_TAGS:
            shown = "!!" + name[len(_CORE):] if name.startswith(_CORE) else name
            raise LimitError(f"the tag {shown} is not allowed in a RED file (plain YAML values only)", node.start_mark)
        try:
            data = super().construct_non_recursive_object(node, tag)
        except (ValueError, OverflowError, TypeError) as exc:
            if "Exceeds the limit" in str(exc):  # CPython's guard against quadratic int()
                raise LimitError(TOO_MANY_DIGITS, node.start_mark) from None
            word = TAG_WORDS.get(name, "value for " + name)
            raise LimitError(f"not a valid {word} (the value does not fit its tag)", node.start_mark) from None
        message = scalar_problem(data)
        if message:
            raise LimitError(message, node.start_mark)
        return data


def scalar_problem(value: Any) -> str | None:
    """Why a loaded scalar is refused (huge integer, lone surrogate), or None."""
    if isinstance(value, str):
        found = SURROGATE.search(value)
        if found:
            return f"text contains a lone surrogate (\\u{ord(found.group()):04x}), which is not valid Unicode"
    elif isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > MAX_INT_BITS:
        return TOO_MANY_DIGITS
    return None


def guarded_yaml() -> YAML:
    """A round-trip YAML loader with every limit of this module installed."""
    yaml = YAML(typ="rt", pure=True)
    yaml.allow_duplicate_keys = False
    yaml.Scanner = GuardedScanner
    yaml.Composer = GuardedComposer
    yaml.Constructor = GuardedConstructor
    return yaml


def plain_problem(data: Any) -> tuple[KeyPath, str] | None:
    """The first limit that plain (JSON-loaded) ``data`` breaks, as (key path, message).

    Walks without recursion, so it is safe on data of any depth.
    """
    stack: list[tuple[Any, KeyPath]] = [(data, ())]
    limit, count = max_values(), 0
    while stack:
        value, path = stack.pop()
        count += 1
        if count > limit:
            return path[:SHOWN_PATH], too_many_values(limit)
        if len(path) > MAX_DEPTH:
            return path[:SHOWN_PATH], f"nested deeper than {MAX_DEPTH} levels"
        if isinstance(value, dict):
            for key, item in value.items():
                message = scalar_problem(key)
                if message:
                    return path, f"key: {message}"
                stack.append((item, path + (key,)))
        elif isinstance(value, list):
            stack.extend((item, path + (index,)) for index, item in enumerate(value))
        else:
            message = scalar_problem(value)
            if message:
                return path, message
    return None
