"""Reading a batch's metrics while it runs and after it ends (the ``metrics`` RED extension).

The batch pipeline makes one :class:`MetricsReader` per batch, calls :meth:`~MetricsReader.poll`
every second or so while the container runs (only complete new lines are read; a half-written
last line waits for the next poll; a truncated or replaced file is read again from its start)
and :meth:`~MetricsReader.finish` once at the end. The result is plain JSON::

    {"final": {name: value}, "best": {"step": s, name: value, …}, "series": {name: [[step, value], …]},
     "objective": {"name", "goal", "scope", "value", "step"}, "problems": [{"source", "line", "reason"}]}

Memory stays bounded whatever the program writes: each series keeps at most ``max_points``
points (evenly thinned, the last point always kept), lines longer than ``MAX_LINE`` are
skipped, and problems are capped. Files are opened without following a symbolic link out of
their base directory and only when they are regular files, so a hostile container cannot make
faice read a host file or block on a FIFO. Non-finite values (nan, inf) are kept as ``None``
(JSON has no NaN) and reported once per metric. Nothing here raises on bad metric data.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from faice.descriptors import OutsideError, open_beneath
from faice.red.metrics import (
    REFERENCE,
    STEP_KEYS,
    EarlyStopping,
    MetricsSpec,
    Objective,
    Source,
    relative_path_problem,
)

__all__ = [
    "EarlyStopping",
    "MetricsReader",
    "MetricsSpec",
    "Objective",
    "ResolvedSource",
    "resolve_sources",
    "summary",
]

MAX_POINTS = 10_000
MAX_LINE = 64 * 1024  # bytes; longer lines are skipped
MAX_READ_PER_POLL = 8 * 1024 * 1024  # bytes per source and poll; the rest waits for the next poll
MAX_JSON_BYTES = 16 * 1024 * 1024
MAX_SOURCE_BYTES = 1024**3  # of one line-format source; beyond, faice stops reading it
CHECKED_BYTES = 4096  # first and last bytes read, compared to notice a rewrite in place
MAX_PROBLEMS = 100
# One line's match of a keyvalue pattern: a pattern that takes longer (catastrophic
# backtracking) is given up for its source, so a batch's metrics cost bounded CPU.
MATCH_TIMEOUT_S = 0.5


# ---------------------------------------------------------------- resolving paths


@dataclass(frozen=True)
class ResolvedSource:
    """A source with its host path: ``path`` lies below ``base``; ``problem`` when it cannot be read."""

    source: Source
    path: Path | None
    base: Path | None
    problem: str | None = None


def resolve_sources(
    spec: MetricsSpec,
    *,
    outputs_dir: Path,
    stdout_file: Path | None = None,
    input_dirs: Mapping[str, Path] | None = None,
    inputs: Mapping[str, Any] | None = None,
    parameters: Mapping[str, Any] | None = None,
    index: int = 0,
) -> list[ResolvedSource]:
    """Host paths of every source of one batch.

    ``outputs_dir`` is the host side of /cc/outputs, ``stdout_file`` the file the batch's
    stdout is written to as it comes, ``input_dirs`` the host directory of each Directory
    input (e.g. the SSHFS mount point), ``inputs``/``parameters``/``index`` the batch's values
    for ``$(inputs.NAME)``, ``$(sweep.NAME)`` and ``$(sweep.index)`` in file names.
    """
    resolved = []
    for source in spec.sources:
        if source.kind == "stdout":
            base = stdout_file.parent if stdout_file else None
            problem = None if stdout_file else "stdout is not recorded for this batch"
            resolved.append(ResolvedSource(source, stdout_file, base, problem))
            continue
        name, problem = _fill(source.path or "", inputs or {}, parameters or {}, index)
        if problem is None:
            problem = relative_path_problem(name)
        if source.directory:
            base = (input_dirs or {}).get(source.directory)
            if base is None and problem is None:
                problem = f"input {source.directory!r} has no local directory in this batch"
        else:
            base = Path(outputs_dir)
        path = Path(base) / name if base is not None and problem is None else None
        resolved.append(ResolvedSource(source, path, Path(base) if base is not None else None, problem))
    return resolved


def _fill(template: str, inputs: Mapping[str, Any], parameters: Mapping[str, Any], index: int) -> tuple[str, str | None]:
    problem = None

    def value(match: re.Match[str]) -> str:
        nonlocal problem
        kind, name = match.groups()
        values = inputs if kind == "inputs" else {**parameters, "index": index}
        found = values.get(name)
        if isinstance(found, bool) or not isinstance(found, (str, int, float)):
            problem = f"{match.group(0)} has no text value in this batch"
            return ""
        return str(found)

    return REFERENCE.sub(value, template), problem


# ---------------------------------------------------------------- series


class _Series:
    """At most ``cap`` points of one metric, evenly thinned; the last point is kept aside."""

    __slots__ = ("cap", "count", "last", "points", "stride")

    def __init__(self, cap: int) -> None:
        self.cap = max(2, cap)
        self.points: list[list[Any]] = []
        self.stride = 1
        self.count = 0
        self.last: list[Any] | None = None

    def add(self, step: float, value: float | None) -> None:
        point = [step, value]
        if self.count % self.stride == 0:
            self.points.append(point)
            if len(self.points) >= self.cap:
                self.points = self.points[::2]
                self.stride *= 2
        self.count += 1
        self.last = point

    def as_list(self) -> list[list[Any]]:
        if self.last is not None and (not self.points or self.points[-1] is not self.last):
            return [*self.points, self.last]
        return list(self.points)


# ---------------------------------------------------------------- parsing one source


class _Parser:
    """Turns the lines of one source into records ``{name: value}`` with a step."""

    def __init__(self, reader: MetricsReader, resolved: ResolvedSource) -> None:
        self.reader = reader
        self.source = resolved.source
        self.label = resolved.source.label
        self.pattern_given_up = False
        self.reset()

    def reset(self) -> None:
        self.header: list[str] | None = None
        self.records = 0
        self.non_numeric: set[str] = set()
        self.series: dict[str, _Series] = {}
        self.final: dict[str, float | None] = {}

    # -- values

    def number(self, name: str, raw: Any, line: int | None) -> float | None | bool:
        """The float of ``raw``; None for nan/inf; False when it is not a number (reported once)."""
        if isinstance(raw, bool):
            raw = None
        if isinstance(raw, (int, float)):
            value = float(raw)
        else:
            try:
                value = float(str(raw).strip())
            except (TypeError, ValueError):
                if name not in self.non_numeric:
                    self.non_numeric.add(name)
                    shown = str(raw)[:40]
                    self.reader.problem(self.label, line, f"{name!r} is not a number ({shown!r}); it is skipped")
                return False
        if not math.isfinite(value):
            self.reader.non_finite(self.label, line, name, value)
            return None
        return value

    def record(self, values: dict[str, Any], line: int | None) -> None:
        numbers: dict[str, float | None] = {}
        for name, raw in values.items():
            if raw is None or raw == "":
                continue
            value = self.number(name, raw, line)
            if value is not False:
                numbers[name] = value  # type: ignore[assignment]
        if not numbers:
            return
        step_key = self.source.step or next((k for k in STEP_KEYS if k in numbers), None)
        explicit: float | None = numbers.pop(step_key, None) if step_key else None
        if explicit is not None and explicit == int(explicit):
            explicit = int(explicit)
        self.records += 1
        objective_step: float | None = explicit
        for name, value in numbers.items():
            series = self.series.get(name)
            if series is None:
                series = self.series[name] = _Series(self.reader.max_points)
            # Without a step column a metric's step is how many values of it came before: a
            # program that prints loss per mini-batch and val_accuracy per epoch numbers
            # val_accuracy by epoch whatever its batch size (not by the line's position).
            step = explicit if explicit is not None else series.count
            series.add(step, value)
            self.final[name] = value
            if name == self.reader.spec.objective.name:
                objective_step = step
        self.reader.observe(objective_step if objective_step is not None else self.records - 1, numbers)

    # -- formats

    def line(self, text: str, number: int) -> None:
        fmt = self.source.format
        if fmt == "csv":
            self.csv_line(text, number)
        elif fmt == "jsonl":
            self.jsonl_line(text, number)
        else:
            self.keyvalue_line(text, number)

    def csv_line(self, text: str, number: int) -> None:
        if not text.strip():
            return
        try:
            cells = next(csv.reader([text], delimiter=self.source.separator))
        except csv.Error as exc:
            self.reader.problem(self.label, number, f"not a CSV line: {exc}")
            return
        cells = [c.strip() for c in cells]
        if self.header is None:
            self.header = cells
            return
        if cells == self.header:  # a run that appended to the file wrote the header again
            return
        if len(cells) != len(self.header):
            self.reader.problem(self.label, number, f"expected {len(self.header)} fields like the header, got {len(cells)}")
            return
        self.record(dict(zip(self.header, cells, strict=True)), number)

    def jsonl_line(self, text: str, number: int) -> None:
        if not text.strip():
            return
        data = self.json_object(text, number)
        if data is not None:
            self.record(_flatten(data), number)

    def json_object(self, text: str, number: int | None) -> dict | None:
        """``text`` (a JSONL line, or a whole file where ``number`` is None) as a JSON object of
        metric names to values; None after reporting what it is instead."""
        try:
            data = json.loads(text)
        except ValueError as exc:
            self.reader.problem(self.label, number, f"not a JSON {'document' if number is None else 'object'}: {exc}")
            return None
        if not isinstance(data, dict):
            self.reader.problem(self.label, number, f"expected a JSON object of metric names to numbers, got {type(data).__name__}")
            return None
        return data

    def keyvalue_line(self, text: str, number: int) -> None:
        if text.lstrip().startswith("#"):
            return
        if self.pattern_given_up:
            return
        pattern = self.reader.pattern(self.source)
        groups = pattern.groupindex
        try:
            if "name" in groups and "value" in groups:
                values = {m.group("name"): m.group("value")
                          for m in pattern.finditer(text, concurrent=True, timeout=MATCH_TIMEOUT_S)}
            else:
                match = pattern.search(text, concurrent=True, timeout=MATCH_TIMEOUT_S)
                values = {k: v for k, v in match.groupdict().items() if v is not None} if match else {}
        except TimeoutError:
            self.pattern_given_up = True
            self.reader.problem(self.label, number, f"the pattern took longer than {MATCH_TIMEOUT_S} s on this "
                                                    "line (it backtracks too much); the source is not read further")
            return
        if values:
            self.record(values, number)

    def whole_json(self, text: str) -> None:
        """A final-metrics JSON file: the whole of it replaces what was read before."""
        data = self.json_object(text, None)
        if data is None:
            return
        self.final = {}
        for name, raw in _flatten(data).items():
            value = self.number(name, raw, None)
            if value is not False:
                self.final[name] = value  # type: ignore[assignment]


def _flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    """``{"val": {"loss": 1}}`` → ``{"val.loss": 1}``; lists and strings stay as they are."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


# ---------------------------------------------------------------- following one file


class _Tail:
    """Reads the complete new lines of a file that is being written; notices truncation,
    replacement (a new inode, or a size below what was read) and a rewrite in place (a
    program that rewrites its status file each epoch: the bytes already read changed) and
    then starts over."""

    def __init__(self, resolved: ResolvedSource, parser: _Parser) -> None:
        self.base = resolved.base
        self.relative = os.path.relpath(resolved.path, resolved.base) if resolved.path and resolved.base else None
        self.parser = parser
        self.offset = 0
        self.identity: tuple[int, int] | None = None
        self.changed: tuple[int, int, int] | None = None  # (mtime, ctime, size) when last read
        self.head = b""  # the first and the last bytes read: a rewrite in place changes them
        self.tail = b""
        self.error: str | None = None  # why the file could not be opened at the last poll
        self.pending = b""
        self.skipping = False  # inside an over-long line
        self.line_number = 0
        self.json_seen: tuple[int, int] | None = None

    def open(self) -> int | None:
        """A read-only descriptor of the regular file, None when it is absent or not allowed.

        Opened beneath its base directory one component at a time, never following a link
        out of it: the container writes there while faice reads, so a path checked first and
        opened by name after could lead to a host file by then."""
        if self.relative is None or self.base is None:
            return None
        try:
            fd = open_beneath(self.base, self.relative, os.O_RDONLY | os.O_NONBLOCK)
        except OutsideError:
            self.parser.reader.problem_once(self.parser.label, "resolves outside its directory (a symbolic link?); not read")
            return None
        except OSError as exc:
            self.error = exc.strerror or str(exc)
            return None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            self.parser.reader.problem_once(self.parser.label, "is not a regular file; not read")
            return None
        return fd

    def poll(self, final: bool) -> None:
        self.error = None
        fd = self.open()
        if fd is None:
            if final and self.error and self.identity is None and self.json_seen is None:
                self.parser.reader.problem_once(self.parser.label, f"not read: {self.error}")
            return
        try:
            info = os.fstat(fd)
            if self.parser.source.format == "json":
                self.read_json(fd, info, final)
                return
            identity = (info.st_dev, info.st_ino)
            if self.identity is not None and (identity != self.identity or info.st_size < self.offset
                                              or self.rewritten(fd, info)):
                self.restart()
            self.identity = identity
            size = min(info.st_size, MAX_SOURCE_BYTES)
            if info.st_size > MAX_SOURCE_BYTES:
                self.parser.reader.problem_once(self.parser.label, f"larger than {MAX_SOURCE_BYTES} bytes; "
                                                                   "the rest is not read")
            budget = size - self.offset
            if not final:
                budget = min(budget, MAX_READ_PER_POLL)  # the rest waits for the next poll
            while budget > 0:
                chunk = os.pread(fd, min(budget, 1024 * 1024), self.offset)
                if not chunk:
                    break
                if len(self.head) < CHECKED_BYTES:
                    self.head += chunk[:CHECKED_BYTES - len(self.head)]
                self.tail = (self.tail + chunk)[-CHECKED_BYTES:]
                self.offset += len(chunk)
                budget -= len(chunk)
                self.feed(chunk)
            self.changed = (info.st_mtime_ns, info.st_ctime_ns, info.st_size)
            if final and self.pending and not self.skipping:
                self.line(self.pending)
                self.pending = b""
        finally:
            os.close(fd)

    def rewritten(self, fd: int, info: os.stat_result) -> bool:
        """Were the bytes already read changed (the same file written again from its start)?
        Checked only when the file changed since the last read: its first and last bytes."""
        if not self.offset or self.changed == (info.st_mtime_ns, info.st_ctime_ns, info.st_size):
            return False
        if os.pread(fd, len(self.head), 0) != self.head:
            return True
        return os.pread(fd, len(self.tail), self.offset - len(self.tail)) != self.tail

    def restart(self) -> None:
        if self.parser.reader.spec.objective.name in self.parser.series:
            self.parser.reader.forget_best()  # `scope: best` must not report a value no longer there
        self.offset = 0
        self.head = self.tail = b""
        self.pending = b""
        self.skipping = False
        self.line_number = 0
        self.parser.reset()

    def feed(self, chunk: bytes) -> None:
        data = self.pending + chunk
        lines = data.split(b"\n")
        self.pending = lines.pop()
        for raw in lines:
            if self.skipping:
                self.skipping = False
                self.line_number += 1
                continue
            self.line(raw)
        if len(self.pending) > MAX_LINE:
            if not self.skipping:
                self.line_number += 1
                self.parser.reader.problem(self.parser.label, self.line_number, f"line longer than {MAX_LINE} bytes; skipped")
            self.skipping = True
            self.pending = b""

    def line(self, raw: bytes) -> None:
        self.line_number += 1
        if len(raw) > MAX_LINE:
            self.parser.reader.problem(self.parser.label, self.line_number, f"line longer than {MAX_LINE} bytes; skipped")
            return
        self.parser.line(raw.decode("utf-8", errors="replace").rstrip("\r"), self.line_number)

    def read_json(self, fd: int, info: os.stat_result, final: bool) -> None:
        seen = (info.st_ino, info.st_mtime_ns ^ info.st_size)
        if seen == self.json_seen:
            return
        if info.st_size > MAX_JSON_BYTES:
            self.parser.reader.problem_once(self.parser.label, f"larger than {MAX_JSON_BYTES} bytes; not read")
            return
        data = os.pread(fd, info.st_size, 0)
        try:
            json.loads(data)
        except ValueError:
            if not final:
                return  # probably still being written: try again at the next poll
        self.json_seen = seen
        self.parser.whole_json(data.decode("utf-8", errors="replace"))


# ---------------------------------------------------------------- the reader


@dataclass
class MetricsReader:
    """All metrics of one batch. ``poll()`` while it runs, ``finish()`` once at the end."""

    spec: MetricsSpec
    sources: Sequence[ResolvedSource]
    max_points: int = MAX_POINTS
    _problems: list[dict[str, Any]] = field(default_factory=list, init=False)
    _problem_count: int = field(default=0, init=False)
    _reported: set[tuple[str, str]] = field(default_factory=set, init=False)
    _best: dict[str, Any] | None = field(default=None, init=False)
    _patterns: dict[str, Any] = field(default_factory=dict, init=False)  # regex patterns

    def __post_init__(self) -> None:
        self._parsers = [_Parser(self, resolved) for resolved in self.sources]
        self._tails = [_Tail(resolved, parser) for resolved, parser in zip(self.sources, self._parsers, strict=True)]
        for resolved in self.sources:
            if resolved.problem:
                self.problem(resolved.source.label, None, resolved.problem)

    @classmethod
    def for_batch(cls, spec: MetricsSpec, **where: Any) -> MetricsReader:
        """A reader for one batch; ``where`` as for :func:`resolve_sources`."""
        return cls(spec, resolve_sources(spec, **where))

    def poll(self) -> dict[str, Any]:
        """Read what was written since the last call; returns :meth:`latest`."""
        for tail in self._tails:
            tail.poll(final=False)
        return self.latest()

    def finish(self) -> dict[str, Any]:
        """Read everything (a last line without newline included) and return the result."""
        for tail in self._tails:
            tail.poll(final=True)
        return self.result()

    def latest(self) -> dict[str, Any]:
        """The newest value of the objective and its step, for a live display."""
        name = self.spec.objective.name
        for parser in self._parsers:
            series = parser.series.get(name)
            if series is not None and series.last is not None:
                return {"name": name, "step": series.last[0], "value": series.last[1]}
        return {"name": name, "step": None, "value": None}

    def series(self, name: str | None = None) -> list[list[Any]]:
        """The series of ``name`` (default: the objective) so far, for early stopping."""
        name = name or self.spec.objective.name
        for parser in self._parsers:
            if name in parser.series:
                return parser.series[name].as_list()
        return []

    def result(self) -> dict[str, Any]:
        series: dict[str, list[list[Any]]] = {}
        final: dict[str, float | None] = {}
        for parser in self._parsers:
            for name, values in parser.series.items():
                series.setdefault(name, values.as_list())
        for parser in self._parsers:
            for name, value in parser.final.items():
                if parser.source.format == "json" or name not in final:
                    final[name] = value
        objective = self.spec.objective
        best = dict(self._best) if self._best else {}
        if objective.scope == "best" and best:
            value, step = best.get(objective.name), best.get("step")
        else:
            value = final.get(objective.name)
            step = series[objective.name][-1][0] if objective.name in series and series[objective.name] else None
            if objective.name in final and objective.name not in series:
                step = None
        problems = list(self._problems)
        if self._problem_count > len(problems):
            problems.append({"source": None, "line": None,
                             "reason": f"{self._problem_count - len(problems)} more problems not shown"})
        return {
            "final": final,
            "best": best,
            "series": series,
            "objective": {**objective.as_dict(), "value": value, "step": step},
            "problems": problems,
        }

    # -- called by the parsers

    def pattern(self, source: Source) -> Any:
        key = source.pattern or ""
        compiled = self._patterns.get(key)
        if compiled is None:
            compiled = self._patterns[key] = source.compiled()
        return compiled

    def observe(self, step: float, numbers: dict[str, float | None]) -> None:
        objective = self.spec.objective
        value = numbers.get(objective.name)
        if value is None:
            return
        if self._best is None or objective.better(value, self._best[objective.name]):
            self._best = {"step": step, **numbers}

    def forget_best(self) -> None:
        """A source is read again from its start: its earlier values no longer count."""
        self._best = None

    def problem(self, source: str | None, line: int | None, reason: str) -> None:
        self._problem_count += 1
        if len(self._problems) < MAX_PROBLEMS:
            self._problems.append({"source": source, "line": line, "reason": reason})

    def problem_once(self, source: str, reason: str) -> None:
        if (source, reason) not in self._reported:
            self._reported.add((source, reason))
            self.problem(source, None, reason)

    def non_finite(self, source: str, line: int | None, name: str, value: float) -> None:
        if (source, "non-finite " + name) not in self._reported:
            self._reported.add((source, "non-finite " + name))
            self.problem(source, line, f"{name} is {value} (recorded as null)")


def summary(result: Mapping[str, Any]) -> dict[str, Any]:
    """``result`` without the series, for result.json (the series go to ``metrics.json``)."""
    return {key: value for key, value in result.items() if key != "series"}


Point = TypeVar("Point")


def thinned(points: list[Point], most: int) -> list[Point]:
    """At most ``most`` of ``points``, evenly spaced, the last one kept: a series sent to a
    sampler or kept in a batch document stays small however long the batch logged."""
    if len(points) <= most:
        return points
    stride = math.ceil(len(points) / most)
    return points[::stride][: most - 1] + [points[-1]]
