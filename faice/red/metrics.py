"""The ``metrics`` extension of a RED file: where a batch's metrics are, and what "best" means.

faice reads metrics from files and stdout the program writes anyway (a Keras ``CSVLogger``
file, JSON lines, a final JSON, ``key=value`` lines), so no library is needed in the image.
This module only parses and checks the extension (:func:`metrics_problems` for
``faice validate``, :meth:`MetricsSpec.from_red` for the engines); reading is done by
:mod:`faice.pipeline.metrics`. Like ``sweep``, ``metrics`` is faice's own: it is removed
before a RED file is sent to an upstream agency (:data:`FAICE_ONLY_KEYS`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from faice.errors import KeyPath, Problem, ValidationError, kind_of
from faice.red.load import located
from faice.red.values import is_int, is_number

FAICE_ONLY_KEYS = ("metrics",)
GOALS = ("min", "max")
SCOPES = ("final", "best")
FORMATS = ("csv", "jsonl", "json", "keyvalue")
EXTENSION_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json"}
STEP_KEYS = ("epoch", "step", "iteration", "global_step")
# name=value pairs whose value looks like a number (nan and inf included)
DEFAULT_PATTERN = (
    r"(?<![\w.])(?P<name>[A-Za-z_][\w.\-/]*)="
    r"(?P<value>[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|nan|NaN|inf|Inf|infinity|Infinity))"
    r"(?![\w.])"
)
REFERENCE = re.compile(r"\$\((sweep|inputs)\.([^)]*)\)")
METRIC_NAME = re.compile(r"^[A-Za-z_][\w.\-/]*$")
EARLY_RULES = ("median", "percentile", "threshold", "asha", "hyperband")
# The keys each rule takes besides ``rule`` (anything else is a mistake worth naming).
EARLY_KEYS = {
    "median": ("graceSteps", "minBatches"),
    "percentile": ("percentile", "graceSteps", "minBatches"),
    "threshold": ("lower", "upper", "graceSteps"),
    "asha": ("reductionFactor", "graceSteps", "maxSteps"),
    "hyperband": ("reductionFactor", "graceSteps", "maxSteps"),
}
SOURCE_KEYS = ("file", "stdout", "format", "pattern", "in", "step", "separator")
TOP_KEYS = ("objective", "sources", "step", "earlyStopping")


@dataclass(frozen=True)
class Objective:
    """The metric that ranks batches: ``goal`` min or max, ranked by its final or best value."""

    name: str
    goal: str = "max"
    scope: str = "final"

    def better(self, a: float, b: float) -> bool:
        """True when ``a`` is strictly better than ``b``."""
        return a > b if self.goal == "max" else a < b

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "goal": self.goal, "scope": self.scope}


@dataclass(frozen=True)
class Source:
    """One place metrics come from: a file (relative to the outputs or an input directory) or stdout."""

    kind: str  # "file" or "stdout"
    format: str  # csv, jsonl, json, keyvalue (stdout: keyvalue)
    path: str | None = None  # template; $(sweep.NAME), $(inputs.NAME) substituted per batch
    directory: str | None = None  # name of a Directory input ("in"); None: the batch's outputs
    pattern: str | None = None  # keyvalue: regex with named groups
    step: str | None = None  # the column/key numbering steps; None: epoch, step, … when present
    separator: str = ","

    @property
    def label(self) -> str:
        if self.kind == "stdout":
            return "stdout"
        return f"{self.directory}/{self.path}" if self.directory else str(self.path)

    def compiled(self) -> Any:
        """The pattern for the ``regex`` module, whose matches can time out and let other
        threads run (a pattern like ``(a+)+$`` backtracks exponentially; ``re`` would hold the
        interpreter for as long as that takes: an agency server's every thread)."""
        import regex

        return regex.compile(self.pattern or DEFAULT_PATTERN)


@dataclass(frozen=True)
class EarlyStopping:
    """The settings of one early-stopping rule (the rules live in :mod:`faice.pipeline.stopping`).

    ``median``/``percentile``: a batch worse than the others' median (``percentile``: outside the
    best ``percentile`` %) at the same step; ``threshold``: a value outside ``lower``/``upper``;
    ``asha``: successive halving at the rungs ``graceSteps × reductionFactor^k`` below ``maxSteps``;
    ``hyperband``: batches spread over brackets of ASHA with growing first rungs."""

    rule: str = "median"
    grace_steps: int = 1
    min_batches: int = 3
    percentile: float = 50.0
    lower: float | None = None
    upper: float | None = None
    reduction_factor: int = 3
    max_steps: int | None = None

    @classmethod
    def from_mapping(cls, early: dict) -> EarlyStopping:
        """The settings of a (valid) ``earlyStopping`` mapping."""
        rule = early.get("rule", "median")
        return cls(
            rule=rule,
            grace_steps=int(early.get("graceSteps", 1)),
            min_batches=int(early.get("minBatches", 3)),
            percentile=float(early.get("percentile", 50.0)),
            lower=float(early["lower"]) if "lower" in early else None,
            upper=float(early["upper"]) if "upper" in early else None,
            reduction_factor=int(early.get("reductionFactor", 3)),
            max_steps=int(early["maxSteps"]) if "maxSteps" in early else None,
        )


@dataclass(frozen=True)
class MetricsSpec:
    """A validated ``metrics`` section."""

    objective: Objective
    sources: tuple[Source, ...]
    step: str | None = None
    early_stopping: EarlyStopping | None = None

    @classmethod
    def from_red(cls, data: dict, source: str = "RED file") -> MetricsSpec | None:
        """The spec of a RED document; None without ``metrics``; ValidationError when it is wrong."""
        if not isinstance(data, dict) or "metrics" not in data:
            return None
        problems = metrics_problems(data, source)
        if problems:
            raise ValidationError(problems)
        return cls.from_mapping(data["metrics"])

    @classmethod
    def from_mapping(cls, metrics: dict) -> MetricsSpec:
        """The spec of a (valid) ``metrics`` mapping."""
        objective = metrics["objective"]
        step = metrics.get("step")
        sources = tuple(_source(item, step) for item in metrics["sources"])
        early = metrics.get("earlyStopping")
        early_stopping = EarlyStopping.from_mapping(early) if isinstance(early, dict) else None
        return cls(
            objective=Objective(objective["name"], objective.get("goal", "max"), objective.get("scope", "final")),
            sources=sources,
            step=step,
            early_stopping=early_stopping,
        )


def _source(item: dict, step: str | None) -> Source:
    if "stdout" in item:
        pattern = item["stdout"] if isinstance(item["stdout"], str) else item.get("pattern")
        return Source("stdout", "keyvalue", pattern=pattern, step=item.get("step", step))
    path = item["file"]
    return Source(
        "file",
        item.get("format") or _format_from_name(path) or "keyvalue",
        path=path,
        directory=item.get("in"),
        pattern=item.get("pattern"),
        step=item.get("step", step),
        separator=item.get("separator", ","),
    )


def _format_from_name(path: str) -> str | None:
    lower = path.lower()
    for extension, name in EXTENSION_FORMATS.items():
        if lower.endswith(extension):
            return name
    return None


def strip_faice_keys(data: dict) -> dict:
    """``data`` without faice-only top-level keys (a shallow copy), for upstream agencies."""
    return {key: value for key, value in data.items() if key not in FAICE_ONLY_KEYS}


# ---------------------------------------------------------------- problems


def metrics_problems(data: dict, source: str) -> list[Problem]:
    """Everything wrong with the ``metrics`` of a RED document (none when it has none)."""
    if not isinstance(data, dict) or "metrics" not in data:
        return []
    found: list[tuple[KeyPath, str]] = []
    metrics = data["metrics"]
    if not isinstance(metrics, dict):
        found.append((("metrics",), f"expected a mapping with objective and sources, got {kind_of(metrics)}"))
        return located(data, source, found)
    for key in metrics:
        if key not in TOP_KEYS:
            found.append((("metrics", key), f"unknown key; expected one of {', '.join(TOP_KEYS)}"))
    _check_objective(metrics, found)
    if "step" in metrics and not _is_name(metrics["step"]):
        found.append((("metrics", "step"), f"expected a column or key name, got {metrics['step']!r}"))
    sources = metrics.get("sources")
    if not isinstance(sources, list) or not sources:
        found.append((("metrics", "sources"), "expected a non-empty list of sources ({file: …} or {stdout: …})"))
    else:
        for index, item in enumerate(sources):
            _check_source(data, item, ("metrics", "sources", index), found)
    _check_early_stopping(metrics, found)
    return located(data, source, found)


def _check_objective(metrics: dict, found: list) -> None:
    path: KeyPath = ("metrics", "objective")
    objective = metrics.get("objective")
    if objective is None:
        found.append((path, "missing: name the metric that ranks the batches, e.g. {name: val_accuracy, goal: max}"))
        return
    if not isinstance(objective, dict):
        found.append((path, f"expected a mapping {{name, goal}}, got {kind_of(objective)}"))
        return
    for key in objective:
        if key not in ("name", "goal", "scope"):
            found.append(((*path, key), "unknown key; expected name, goal or scope"))
    if "name" not in objective:
        found.append(((*path, "name"), "missing: the name of the metric to optimise"))
    elif not _is_name(objective["name"]):
        found.append(((*path, "name"), f"expected a metric name (letters, digits, _ . - /), got {objective['name']!r}"))
    if "goal" not in objective:
        found.append(((*path, "goal"), "missing: min or max"))
    elif objective["goal"] not in GOALS:
        found.append(((*path, "goal"), f"expected min or max, got {objective['goal']!r}"))
    if "scope" in objective and objective["scope"] not in SCOPES:
        found.append(((*path, "scope"), f"expected final or best, got {objective['scope']!r}"))


def _check_source(data: dict, item: Any, path: KeyPath, found: list) -> None:
    if not isinstance(item, dict):
        found.append((path, f"expected a mapping {{file: …}} or {{stdout: …}}, got {kind_of(item)}"))
        return
    for key in item:
        if key not in SOURCE_KEYS:
            found.append(((*path, key), f"unknown key; expected one of {', '.join(SOURCE_KEYS)}"))
    if ("file" in item) == ("stdout" in item):
        found.append((path, "expected exactly one of file (a metrics file) or stdout (a pattern for stdout lines)"))
        return
    if "step" in item and not _is_name(item["step"]):
        found.append(((*path, "step"), f"expected a column or key name, got {item['step']!r}"))
    if "stdout" in item:
        for key in ("format", "in", "separator"):
            if key in item:
                found.append(((*path, key), f"{key} applies to files only; stdout lines are matched by a pattern"))
        value = item["stdout"]
        if isinstance(value, str):
            if "pattern" in item:
                found.append(((*path, "pattern"), "give the pattern either as stdout: PATTERN or as pattern, not both"))
            _check_pattern(value, (*path, "stdout"), found)
        elif value is True:
            if "pattern" in item:
                _check_pattern(item["pattern"], (*path, "pattern"), found)
        else:
            found.append(((*path, "stdout"), f"expected a regular expression or true (name=value lines), got {value!r}"))
        return
    _check_file(data, item, path, found)


def _check_file(data: dict, item: dict, path: KeyPath, found: list) -> None:
    name = item["file"]
    message = relative_path_problem(name) if isinstance(name, str) else f"expected a relative path, got {kind_of(name)}"
    if message:
        found.append(((*path, "file"), message))
    else:
        _check_references(data, name, (*path, "file"), found)
    fmt = item.get("format")
    if fmt is not None and fmt not in FORMATS:
        found.append(((*path, "format"), f"expected one of {', '.join(FORMATS)}, got {fmt!r}"))
    elif fmt is None and isinstance(name, str) and not message and _format_from_name(name) is None and "pattern" not in item:
        found.append(((*path, "format"), f"cannot tell the format of {name!r} from its name: add format "
                                         f"({', '.join(FORMATS)})"))
    if "pattern" in item:
        if (fmt or (isinstance(name, str) and _format_from_name(name)) or "keyvalue") != "keyvalue":
            found.append(((*path, "pattern"), "a pattern applies to format keyvalue (lines matched by a regex) only"))
        _check_pattern(item["pattern"], (*path, "pattern"), found)
    separator = item.get("separator", ",")
    if not isinstance(separator, str) or len(separator) != 1 or separator in "\r\n\"":
        found.append(((*path, "separator"), f"expected one character such as ',' or ';', got {separator!r}"))
    if "in" in item:
        _check_directory_input(data, item["in"], (*path, "in"), found)


def _check_directory_input(data: dict, name: Any, path: KeyPath, found: list) -> None:
    cli: dict[str, Any] = data["cli"] if isinstance(data.get("cli"), dict) else {}
    inputs: dict[str, Any] = cli["inputs"] if isinstance(cli.get("inputs"), dict) else {}
    if not isinstance(name, str) or name not in inputs:
        known = ", ".join(sorted(str(k) for k, v in inputs.items() if _is_directory(v))) or "none"
        found.append((path, f"expected the name of a Directory input of the cli, got {name!r}; Directory inputs: {known}"))
    elif not _is_directory(inputs[name]):
        found.append((path, f"cli input {name!r} is not a Directory; metrics files can be read from Directory inputs "
                            "(a writable mount) or, without in, from the batch's outputs"))


def _is_directory(spec: Any) -> bool:
    kind = spec.get("type") if isinstance(spec, dict) else spec
    return isinstance(kind, str) and kind.rstrip("?") == "Directory"


def _check_references(data: dict, text: str, path: KeyPath, found: list) -> None:
    from faice.red.semantics import sweep_parameter_names

    parameters = sweep_parameter_names(data) | {"index"}
    cli: dict[str, Any] = data["cli"] if isinstance(data.get("cli"), dict) else {}
    inputs: dict[str, Any] = cli["inputs"] if isinstance(cli.get("inputs"), dict) else {}
    for match in REFERENCE.finditer(text):
        kind, name = match.groups()
        if kind == "sweep" and ("sweep" not in data or name not in parameters):
            known = ", ".join(sorted(parameters - {"index"})) or "none"
            found.append((path, f"unknown sweep parameter in {match.group(0)}; parameters: {known} (and index)"))
        elif kind == "inputs" and name not in inputs:
            found.append((path, f"unknown input in {match.group(0)}; cli inputs: {', '.join(sorted(map(str, inputs)))}"))


def _check_pattern(pattern: Any, path: KeyPath, found: list) -> None:
    if not isinstance(pattern, str):
        found.append((path, f"expected a regular expression, got {kind_of(pattern)}"))
        return
    import regex

    try:
        compiled = regex.compile(pattern)
    except regex.error as exc:
        found.append((path, f"not a valid regular expression: {exc}"))
        return
    groups = set(compiled.groupindex)
    if not groups:
        found.append((path, "the pattern needs named groups: (?P<name>…) and (?P<value>…), "
                            "or one group per metric such as (?P<loss>[0-9.]+)"))
    elif ("name" in groups) != ("value" in groups):
        found.append((path, "a pattern with a group 'name' needs a group 'value' too (and vice versa)"))


def _check_early_stopping(metrics: dict, found: list) -> None:
    if "earlyStopping" not in metrics:
        return
    path: KeyPath = ("metrics", "earlyStopping")
    early = metrics["earlyStopping"]
    if not isinstance(early, dict):
        found.append((path, f"expected a mapping such as {{rule: asha, graceSteps: 1, reductionFactor: 3}} "
                            f"(rules: {', '.join(EARLY_RULES)}), got {kind_of(early)}"))
        return
    rule = early.get("rule", "median")
    if rule not in EARLY_RULES:
        found.append(((*path, "rule"), f"expected one of {', '.join(EARLY_RULES)}, got {rule!r}"))
        return
    allowed = EARLY_KEYS[rule]
    for key in early:
        if key == "rule" or key in allowed:
            continue
        takes = [name for name, keys in EARLY_KEYS.items() if key in keys]
        if takes:
            found.append(((*path, key), f"{key} applies to the rule{'s' if len(takes) > 1 else ''} "
                                        f"{', '.join(takes)}; rule {rule} takes {', '.join(allowed)}"))
        else:
            found.append(((*path, key), f"unknown key; rule {rule} takes {', '.join(allowed)}"))
    low_grace = 1 if rule in ("asha", "hyperband") else 0
    for key, low in (("graceSteps", low_grace), ("minBatches", 1), ("reductionFactor", 2), ("maxSteps", 1)):
        if key in allowed and key in early and not (is_int(early[key]) and early[key] >= low):
            found.append(((*path, key), f"expected an integer >= {low}, got {early[key]!r}"))
    if rule == "percentile":
        value = early.get("percentile")
        if value is None:
            found.append(((*path, "percentile"), "missing: the share of batches to keep at each step, "
                                                 "a number between 0 and 100 (50 is the median rule)"))
        elif not (is_number(value) and 0 < value < 100):
            found.append(((*path, "percentile"), f"expected a number between 0 and 100 (exclusive), got {value!r}"))
    if rule == "threshold":
        for key in ("lower", "upper"):
            if key in early and not is_number(early[key]):
                found.append(((*path, key), f"expected a finite number, got {early[key]!r}"))
        if "lower" not in early and "upper" not in early:
            found.append((path, "rule threshold needs lower (stop below it), upper (stop above it) or both"))
        elif is_number(early.get("lower")) and is_number(early.get("upper")) and early["lower"] >= early["upper"]:
            found.append(((*path, "upper"), f"expected upper > lower, got lower {early['lower']!r}, upper {early['upper']!r}"))
    if rule == "hyperband" and "maxSteps" not in early:
        found.append(((*path, "maxSteps"), "missing: hyperband sizes its brackets from the last step a batch reaches "
                                           "(e.g. the number of epochs)"))
    grace, most = early.get("graceSteps", low_grace), early.get("maxSteps")
    if is_int(grace) and is_int(most) and most <= grace:
        found.append(((*path, "maxSteps"), f"expected maxSteps > graceSteps ({grace}), got {most!r}"))


def relative_path_problem(path: str) -> str | None:
    """Why ``path`` cannot name a file below a batch directory (None when it can)."""
    if not path:
        return "expected a relative file path, got an empty string"
    if "\0" in path:
        return "a path cannot contain NUL characters"
    if path.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", path):
        return f"expected a path relative to the batch's outputs (or to the input named by in), got {path!r}"
    if any(part == ".." for part in re.split(r"[/\\]", path)):
        return f"'..' is not allowed: metrics are read inside the batch only, got {path!r}"
    return None


def _is_name(value: Any) -> bool:
    return isinstance(value, str) and bool(METRIC_NAME.match(value))
