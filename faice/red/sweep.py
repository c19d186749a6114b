"""Batches of a RED file: explicit ``batches``, a single batch, or a ``sweep``.

A sweep turns the single-batch template (``inputs``/``outputs``) into one batch per
combination of parameter values. The order is documented and stable:

* ``grid``: cartesian product, the first key varies slowest (like nested for-loops);
* ``zip``: lists of equal length advanced in lock-step;
* ``random``: ``samples`` draws made up front from ``random.Random(seed)`` (seed 0 when
  omitted, so a file always expands the same way), parameters drawn in key order;
* the three are combined as a product: grid outermost, then zip, then random innermost.

The number of batches is computed from the list lengths before anything is expanded and
refused above a limit (:func:`max_batches`: 100,000 by default, ``FAICE_MAX_BATCHES``, or a
lower limit a server passes in), so a 200-byte file cannot ask for 10⁸ batches.

A budget may go with them: ``maxBatches`` keeps the first N combinations (for ``random``,
``samples`` may then be left out: N draws are made), so raising it later grows the sweep
and ``--resume`` runs only the new batches; ``maxConcurrent`` caps how many batches run at
a time (``--parallel`` and the free GPUs/RAM still apply).

``$(sweep.NAME)`` and ``$(sweep.index)`` (0-based) are substituted in every string of the
template; a string that is exactly one reference becomes the typed value. A parameter named
like a ``cli`` input sets that input.

Batch ids hash the *unfilled* document (``{{variables}}`` and ``$(sweep.index)`` still in
place), so secrets never influence them, the same file always yields the same ids and a
growing sweep never changes them; see :func:`batch_id`. A resumed run keeps the indexes it
recorded and numbers new batches after them (:func:`number_batches`).
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import os
import random
import re
from collections.abc import Iterator, Mapping
from typing import Any

from faice.errors import KeyPath, Problem, ValidationError, kind_of
from faice.red.experiment import Batch
from faice.red.load import located
from faice.red.values import is_int, is_number

SWEEP_REFERENCE = re.compile(r"\$\(sweep\.([^)]*)\)")
PARAMETER_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
INDEX = "index"
SECTIONS = ("grid", "zip", "random")
BUDGET_KEYS = ("maxConcurrent", "maxBatches")  # how many at a time; how many in all
DISTRIBUTIONS = ("uniform", "loguniform", "randint", "choice")
ID_PREFIX = "b-"
ID_HEX_CHARS = 12
DEFAULT_MAX_BATCHES = 100_000
MAX_BATCHES_ENV = "FAICE_MAX_BATCHES"


# ---------------------------------------------------------------- expansion


def max_batches(limit: int | None = None) -> int:
    """The most batches a sweep may produce: ``limit`` when given, else ``FAICE_MAX_BATCHES``,
    else :data:`DEFAULT_MAX_BATCHES`."""
    if limit is not None:
        return limit
    text = os.environ.get(MAX_BATCHES_ENV, "").strip()
    try:
        return int(text) if text else DEFAULT_MAX_BATCHES
    except ValueError:
        return DEFAULT_MAX_BATCHES


def sweep_size(sweep: Any) -> int:
    """How many batches ``sweep`` yields, from its list lengths and ``samples``, without
    expanding anything (a malformed part counts as one value: its problem is reported apart)."""
    if not isinstance(sweep, dict):
        return 1
    if isinstance(sweep.get("search"), dict):
        trials = sweep["search"].get("trials")
        return trials if is_int(trials) and trials > 0 else 1
    count = 1
    grid = sweep.get("grid")
    if isinstance(grid, dict):
        for values in grid.values():
            count *= len(values) if isinstance(values, list) and values else 1
    zipped = sweep.get("zip")
    if isinstance(zipped, dict):
        lengths = [len(values) for values in zipped.values() if isinstance(values, list) and values]
        count *= min(lengths) if lengths else 1
    spec = sweep.get("random")
    raw = sweep.get("maxBatches")
    budget = raw if isinstance(raw, int) and not isinstance(raw, bool) and raw > 0 else None
    if isinstance(spec, dict) and spec.get("parameters"):
        samples = spec.get("samples", budget or 1)
        count *= samples if isinstance(samples, int) and not isinstance(samples, bool) and samples > 0 else 1
    return min(count, budget) if budget else count


def expand_batches(data: dict, source: str, *, limit: int | None = None,
                   indexes: Mapping[str, int] | None = None) -> list[Batch]:
    """All batches of a (validated, unfilled) RED document, in execution order.

    ``limit`` lowers the most batches a sweep may produce (see :func:`max_batches`);
    ``indexes`` are the sweep indexes a run directory recorded (batch id -> index): those
    batches keep theirs, new ones are numbered after them (see :func:`number_batches`)."""
    if "batches" in data and isinstance(data["batches"], list):
        batches = [
            _batch(data, index, item.get("inputs") or {}, item.get("outputs") or {}, {}, item)
            for index, item in enumerate(data["batches"])
        ]
    elif isinstance(data.get("sweep"), dict):
        problems = sweep_problems(data, source, limit=limit)
        if problems:
            raise ValidationError(problems)
        if "search" in data["sweep"]:
            return []  # a search's batches are proposed while it runs (faice.pipeline.search)
        return _sweep_batches(data, indexes)
    else:
        batches = [_batch(data, 0, data.get("inputs") or {}, data.get("outputs") or {}, {}, data)]
    _make_ids_unique(batches)
    return batches


def _batch(data: dict, index: int, inputs: dict, outputs: dict, parameters: dict, origin: dict) -> Batch:
    inputs, outputs = copy.deepcopy(inputs), copy.deepcopy(outputs)
    return Batch(
        index=index,
        id=batch_id(data, inputs, outputs, parameters),
        inputs=inputs,
        outputs=outputs,
        parameters=dict(parameters),
        doc=origin.get("doc") if origin is not data else None,
        cloud=copy.deepcopy(origin.get("cloud")),
    )


def batch_id(data: dict, inputs: Any, outputs: Any, parameters: dict) -> str:
    """``b-`` + 12 hex chars of sha256 over the canonical JSON of what defines a batch."""
    container = data.get("container") or {}
    settings = container.get("settings") if isinstance(container, dict) else None
    image = (settings or {}).get("image") if isinstance(settings, dict) else None
    content = {
        "cli": data.get("cli"),
        "image": (image or {}).get("url") if isinstance(image, dict) else None,
        "inputs": inputs,
        "outputs": outputs,
        "parameters": parameters,
    }
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return ID_PREFIX + hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:ID_HEX_CHARS]


def _make_ids_unique(batches: list[Batch]) -> None:
    """Identical batches keep distinct ids: the 2nd, 3rd … occurrence gets ``-1``, ``-2`` …"""
    seen: dict[str, int] = {}
    for batch in batches:
        count = seen.get(batch.id, 0)
        seen[batch.id] = count + 1
        if count:
            batch.id = f"{batch.id}-{count}"


def _sweep_batches(data: dict, indexes: Mapping[str, int] | None) -> list[Batch]:
    """The batches of a grid/zip/random sweep, numbered (``$(sweep.index)``) and in index order."""
    batches = [_unindexed_batch(data, position, parameters)
               for position, parameters in enumerate(combinations(data["sweep"]))]
    _make_ids_unique(batches)
    if indexes:
        number_batches(batches, indexes)
        batches.sort(key=lambda batch: batch.index)
    if _mentions_index(data):
        for batch in batches:
            batch.inputs, batch.outputs, _ = _filled(data, batch.index, batch.parameters)
    return batches


def number_batches(batches: list[Batch], indexes: Mapping[str, int]) -> None:
    """Keep the index a run directory recorded for each of its batches and number the new
    ones after the largest recorded index, in sweep order: ``$(sweep.index)`` of a batch
    never moves while a resumed sweep grows (any axis), so index-named results stay its own."""
    taken: set[int] = set()
    for batch in batches:
        index = indexes.get(batch.id)
        if isinstance(index, int) and not isinstance(index, bool) and index >= 0 and index not in taken:
            batch.index = index
            taken.add(index)
        else:
            batch.index = -1
    free = max(taken, default=-1) + 1
    for batch in batches:
        if batch.index < 0:
            batch.index, free = free, free + 1


def _mentions_index(data: dict) -> bool:
    template = {"inputs": data.get("inputs") or {}, "outputs": data.get("outputs") or {}}
    return f"$(sweep.{INDEX})" in json.dumps(template, default=str)


def _unindexed_batch(data: dict, index: int, parameters: dict[str, Any]) -> Batch:
    """A batch whose id hashes the template filled with its parameters but with
    ``$(sweep.index)`` left in place: the parameters identify a combination, its index
    moves when a sweep grows, and an id that moved with it would run the batch again."""
    inputs, outputs, parameters = _filled(data, None, parameters)
    return _batch(data, index, inputs, outputs, parameters, data)


def _filled(data: dict, index: int | None, parameters: dict[str, Any]) -> tuple[dict, dict, dict]:
    """(inputs, outputs, parameters) of the template filled with one combination (and with
    its index, unless None)."""
    template = {"inputs": data.get("inputs") or {}, "outputs": data.get("outputs") or {}}
    filled = substitute(template, dict(parameters) if index is None else {**parameters, INDEX: index})
    inputs = filled["inputs"]
    for name, value in parameters.items():
        if name in _cli_inputs(data):
            inputs[name] = copy.deepcopy(value)
    return inputs, filled["outputs"], parameters


def search_batch(data: dict, index: int, parameters: dict[str, Any]) -> Batch:
    """The batch of one proposed search trial (``index``: the trial's number), with the id
    its content gives it, as a sweep's batch of the same values would have."""
    batch = _unindexed_batch(data, index, parameters)
    batch.inputs, batch.outputs, _ = _filled(data, index, parameters)
    return batch


def combinations(sweep: dict) -> list[dict[str, Any]]:
    """Every parameter combination of a (valid) sweep, in the documented order."""
    axes: list[list[dict[str, Any]]] = []
    grid = sweep.get("grid") or {}
    for name, values in grid.items():
        axes.append([{name: value} for value in values])
    zipped = sweep.get("zip") or {}
    if zipped:
        names = list(zipped)
        axes.append([dict(zip(names, row, strict=True)) for row in zip(*zipped.values(), strict=True)])
    if sweep.get("random"):
        limit = sweep.get("maxBatches") if is_int(sweep.get("maxBatches")) else None
        axes.append(random_samples(sweep["random"], limit))
    budget = sweep.get("maxBatches")
    budget = budget if isinstance(budget, int) and not isinstance(budget, bool) and budget > 0 else None
    result = []
    for parts in itertools.islice(itertools.product(*axes), budget):  # never more than the budget
        merged: dict[str, Any] = {}
        for part in parts:
            merged.update(part)
        result.append(merged)
    return result


def random_samples(spec: dict, limit: int | None = None) -> list[dict[str, Any]]:
    """``samples`` draws from ``random.Random(seed)``; parameters drawn in key order. With a
    ``limit`` (``maxBatches``) at most that many: the same first draws, so a larger budget
    extends the list (``samples`` defaults to the limit)."""
    rng = random.Random(spec.get("seed", 0))
    parameters = spec.get("parameters") or {}
    samples = []
    count = int(spec.get("samples", limit or 1))
    for _ in range(min(count, limit) if limit else count):
        sample = {}
        for name, distribution in parameters.items():
            (kind, arguments), = distribution.items()
            sample[name] = _draw(rng, kind, arguments)
        samples.append(sample)
    return samples


def _draw(rng: random.Random, kind: str, arguments: list) -> Any:
    if kind == "uniform":
        return rng.uniform(arguments[0], arguments[1])
    if kind == "loguniform":
        return math.exp(rng.uniform(math.log(arguments[0]), math.log(arguments[1])))
    if kind == "randint":  # both ends inclusive, like random.randint
        return rng.randint(arguments[0], arguments[1])
    return copy.deepcopy(rng.choice(arguments))


def substitute(data: Any, values: dict[str, Any]) -> Any:
    """A copy of ``data`` with ``$(sweep.NAME)`` replaced in every string (keys untouched)."""
    if isinstance(data, str):
        whole = SWEEP_REFERENCE.fullmatch(data)
        if whole and whole.group(1) in values:
            return copy.deepcopy(values[whole.group(1)])
        return SWEEP_REFERENCE.sub(lambda m: _render(values[m.group(1)]) if m.group(1) in values else m.group(0), data)
    if isinstance(data, dict):
        return {key: substitute(value, values) for key, value in data.items()}
    if isinstance(data, list):
        return [substitute(value, values) for value in data]
    return data


def _render(value: Any) -> str:
    """Text of a value embedded in a string: floats in their shortest round-trip form."""
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def expanded_red(data: dict, source: str, *, limit: int | None = None, keep_faice_keys: bool = False) -> dict:
    """The RED document with its sweep replaced by an explicit ``batches`` list (plain RED).

    faice-only keys (``metrics``) are removed unless ``keep_faice_keys`` (a faice server that
    announced them); without a sweep the rest is returned as a
    copy. Every batch carries an
    ``outputs`` key (CC-Agency requires it); a top-level ``cloud`` moves into each batch.
    """
    from faice.red.metrics import strip_faice_keys

    result = copy.deepcopy(data if keep_faice_keys else strip_faice_keys(data))
    if "sweep" not in data:
        return result
    if isinstance(data["sweep"], dict) and "search" in data["sweep"]:
        from faice.errors import FaiceError

        raise FaiceError(f"{source}: sweep.search proposes its batches while it runs, from their metrics: it has "
                         "no list of batches to send or convert", hint="run it with faice's local engine "
                         "(execution.engine: ccfaice); grid, zip and random sweeps expand everywhere")
    batches = expand_batches(data, source, limit=limit)
    cloud = result.pop("cloud", None)
    for key in ("sweep", "inputs", "outputs"):
        result.pop(key, None)
    items = []
    for batch in batches:
        item: dict[str, Any] = {"inputs": batch.inputs, "outputs": batch.outputs}
        if cloud is not None:
            item["cloud"] = copy.deepcopy(cloud)
        items.append(item)
    result["batches"] = items
    return result


# ---------------------------------------------------------------- problems


def sweep_problems(data: dict, source: str, *, limit: int | None = None) -> list[Problem]:
    """Everything wrong with the ``sweep`` of a RED document (none when there is no sweep),
    including more batches than :func:`max_batches` (``limit`` when given) allows."""
    if not isinstance(data, dict) or "sweep" not in data:
        return []
    found: list[tuple[KeyPath, str]] = []
    sweep = data["sweep"]
    if "batches" in data:
        found.append((("sweep",), "a sweep needs the single-batch form (inputs/outputs as the template), not batches"))
    if not isinstance(sweep, dict):
        found.append((("sweep",), f"expected a mapping with grid, zip and/or random, got {kind_of(sweep)}"))
        return located(data, source, found)
    for key in sweep:
        if key in BUDGET_KEYS:
            if not is_int(sweep[key]) or sweep[key] < 1:
                found.append((("sweep", key), f"expected a positive integer, got {sweep[key]!r}"))
        elif key not in (*SECTIONS, "search"):
            found.append((("sweep", key), f"unknown key; expected one of {', '.join((*SECTIONS, 'search', *BUDGET_KEYS))}"))
    names: dict[str, KeyPath] = {}
    if "search" in sweep:
        from faice.red.search import search_problems

        found += search_problems(data, names, _check_name, _distribution_problem)
        _check_types(data, sweep, names, found)
        _check_references(data, names, found)
        return located(data, source, found)
    if not any(sweep.get(section) for section in SECTIONS):
        found.append((("sweep",), "empty sweep: give at least one of grid, zip, random or search"))
    _check_lists(sweep, "grid", names, found)
    _check_lists(sweep, "zip", names, found)
    _check_zip_lengths(sweep, found)
    _check_random(sweep, names, found)
    _check_types(data, sweep, names, found)
    _check_references(data, names, found)
    _check_size(sweep, max_batches(limit), found)
    return located(data, source, found)


def _check_size(sweep: dict, limit: int, found: list) -> None:
    count = sweep_size(sweep)
    if count > limit:
        found.append((
            ("sweep",),
            f"the sweep would produce {count:,} batches, more than the limit of {limit:,} "
            f"(set {MAX_BATCHES_ENV} to allow more)",
        ))


def _check_lists(sweep: dict, section: str, names: dict[str, KeyPath], found: list) -> None:
    if section not in sweep:
        return
    block = sweep[section]
    if not isinstance(block, dict):
        found.append((("sweep", section), f"expected a mapping of parameter name to a list of values, got {kind_of(block)}"))
        return
    for name, values in block.items():
        path = ("sweep", section, name)
        _check_name(name, path, names, found)
        if not isinstance(values, list):
            found.append((path, f"expected a list of values, got {kind_of(values)}"))
        elif not values:
            found.append((path, "empty list: a parameter needs at least one value"))


def _check_zip_lengths(sweep: dict, found: list) -> None:
    block = sweep.get("zip")
    if not isinstance(block, dict):
        return
    lists = [(name, values) for name, values in block.items() if isinstance(values, list) and values]
    if not lists:
        return
    first_name, first = lists[0]
    for name, values in lists[1:]:
        if len(values) != len(first):
            found.append((
                ("sweep", "zip", name),
                f"zip lists must have equal lengths: {first_name!s} has {len(first)} values, {name!s} has {len(values)}",
            ))


def _check_name(name: Any, path: KeyPath, names: dict[str, KeyPath], found: list) -> None:
    if not isinstance(name, str) or not PARAMETER_NAME.match(name):
        found.append((path, "parameter names must be identifiers (letters, digits, _; not starting with a digit)"))
        return
    if name == INDEX:
        found.append((path, "'index' is reserved for $(sweep.index), the 0-based batch number"))
        return
    if name in names:
        other = ".".join(str(p) for p in names[name])
        found.append((path, f"parameter {name!r} is already defined in {other}; a parameter may appear only once"))
        return
    names[name] = path


def _check_random(sweep: dict, names: dict[str, KeyPath], found: list) -> None:
    if "random" not in sweep:
        return
    spec = sweep["random"]
    if not isinstance(spec, dict):
        found.append((("sweep", "random"), f"expected a mapping with samples, seed and parameters, got {kind_of(spec)}"))
        return
    for key in spec:
        if key not in ("samples", "seed", "parameters"):
            found.append((("sweep", "random", key), "unknown key; expected samples, seed or parameters"))
    samples = spec.get("samples")
    if samples is None and is_int(sweep.get("maxBatches")):
        pass  # maxBatches draws
    elif not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
        found.append((("sweep", "random", "samples"), f"expected a positive integer number of samples, got {samples!r}"))
    if "seed" in spec and not is_int(spec["seed"]):
        found.append((("sweep", "random", "seed"), f"expected an integer seed, got {spec['seed']!r}"))
    parameters = spec.get("parameters")
    if not isinstance(parameters, dict) or not parameters:
        found.append((("sweep", "random", "parameters"), "expected a non-empty mapping of parameter name to distribution"))
        return
    for name, distribution in parameters.items():
        path = ("sweep", "random", "parameters", name)
        _check_name(name, path, names, found)
        message = _distribution_problem(distribution)
        if message:
            found.append((path, message))


def _distribution_problem(distribution: Any) -> str | None:
    expected = "expected one of {uniform: [low, high]}, {loguniform: [low, high]}, {randint: [low, high]}, {choice: [values]}"
    if not isinstance(distribution, dict) or len(distribution) != 1:
        return expected
    (kind, arguments), = distribution.items()
    if kind not in DISTRIBUTIONS:
        return f"unknown distribution {kind!r}; {expected}"
    if kind == "choice":
        if not isinstance(arguments, list) or not arguments:
            return "choice needs a non-empty list of values"
        return None
    numbers = is_int if kind == "randint" else is_number
    if not isinstance(arguments, list) or len(arguments) != 2 or not all(numbers(a) for a in arguments):
        what = "integers" if kind == "randint" else "numbers"
        return f"{kind} needs a list of two {what} [low, high], got {arguments!r}"
    low, high = arguments
    if kind == "randint" and low > high:
        return f"randint needs low <= high, got [{low}, {high}]"
    if kind != "randint" and low >= high:
        return f"{kind} needs low < high, got [{low}, {high}]"
    if kind == "uniform" and not math.isfinite(float(high) - float(low)):
        return f"uniform needs high - low to be a finite number (draws would be inf), got [{low}, {high}]"
    if kind == "loguniform" and low <= 0:
        return f"loguniform needs low > 0 (it samples the logarithm), got [{low}, {high}]"
    return None


def _check_types(data: dict, sweep: dict, names: dict[str, KeyPath], found: list) -> None:
    """Values of parameters that set a cli input must have that input's type."""
    from faice.cwl.types import check_value

    cli_inputs = _cli_inputs(data)
    for name, path in names.items():
        spec = cli_inputs.get(name)
        if not isinstance(spec, dict) or "type" not in spec:
            continue
        for value_path, value in _example_values(sweep, path):
            message = check_value(spec["type"], value)
            if message:
                found.append((value_path, f"value {value!r} does not fit cli input {name!r}: {message}"))


def _example_values(sweep: dict, path: KeyPath) -> Iterator[tuple[KeyPath, Any]]:
    section = path[1]
    if section in ("grid", "zip"):
        values = sweep[section][path[2]]
        if isinstance(values, list):
            for i, value in enumerate(values):
                yield (*path, i), value
        return
    distribution = sweep[section]["parameters"][path[-1]]
    if _distribution_problem(distribution):
        return
    (kind, arguments), = distribution.items()
    if kind == "choice":
        for i, value in enumerate(arguments):
            yield (*path, kind, i), value
    else:  # both ends can be drawn (randint includes high)
        for i, value in enumerate(arguments):
            yield (*path, kind, i), int(value) if kind == "randint" else float(value)


def _check_references(data: dict, names: dict[str, KeyPath], found: list) -> None:
    cli_inputs = _cli_inputs(data)
    used: set[str] = set()
    for section in ("inputs", "outputs"):
        for path, text in _strings(data.get(section), (section,)):
            for match in SWEEP_REFERENCE.finditer(text):
                name = match.group(1)
                used.add(name)
                if name != INDEX and name not in names:
                    known = ", ".join(sorted(names)) or "none"
                    found.append((path, f"unknown sweep parameter in {match.group(0)}; parameters: {known} (and index)"))
    for name, path in names.items():
        if name not in cli_inputs and name not in used:
            found.append((path, f"parameter {name!r} is neither a cli input nor used as $(sweep.{name}) in inputs/outputs"))


def _strings(data: Any, path: KeyPath) -> Iterator[tuple[KeyPath, str]]:
    if isinstance(data, str):
        yield path, data
    elif isinstance(data, dict):
        for key, value in data.items():
            yield from _strings(value, (*path, key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            yield from _strings(value, (*path, i))



def _cli_inputs(data: dict) -> dict:
    cli = data.get("cli")
    inputs = cli.get("inputs") if isinstance(cli, dict) else None
    return inputs if isinstance(inputs, dict) else {}


