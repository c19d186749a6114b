"""Property-based fuzzing of load + validate: any input ends in success or a clean FaiceError.

Two sources of input: arbitrary YAML/JSON-ish text, and random mutations (delete, replace,
insert, wrap) of the valid corpus. The example counts are bounded so the file runs in seconds.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from faice.errors import FaiceError, ValidationError
from faice.red.load import load_mapping, parse_text, to_plain
from faice.red.validate import validate_red

DATA = Path(__file__).resolve().parents[1] / "data" / "red" / "valid"
VALID = [to_plain(load_mapping(str(path)).data) for path in sorted(DATA.iterdir())]
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["File", "Directory", "{{x}}", "{{", "v1.0", "9", "8", "docker", "ccagency", "slurm", "/abs"]),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.one_of(st.text(max_size=8), st.integers(0, 5), st.sampled_from(["class", "_x", "password"])), inner, max_size=3),
    ),
    max_leaves=8,
)
YAMLISH = st.lists(
    st.sampled_from(list("abc:-[]{}\"'#&*!|>%@`,.?\n \t0123456789") + ["redVersion", "cli", "batches", "{{v}}", "!!binary "]),
    max_size=60,
).map("".join)


def _check(document) -> None:
    try:
        validate_red(document)
    except ValidationError as exc:
        assert exc.problems and all(p.message for p in exc.problems)
        str(exc)


@FUZZ
@given(YAMLISH)
def test_random_text_never_crashes(text):
    try:
        document = parse_text("fuzz.yml", text)
    except FaiceError:
        return
    if isinstance(document.data, dict):
        _check(document)


def _paths(data, prefix=()):
    yield prefix
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _paths(value, prefix + (key,))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            yield from _paths(value, prefix + (index,))


@st.composite
def mutated(draw):
    data = copy.deepcopy(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(data) if p]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = data
        for part in path[:-1]:
            parent = parent[part]
        last = path[-1]
        action = draw(st.sampled_from(["delete", "replace", "insert", "wrap"]))
        if action == "delete":
            del parent[last]
        elif action == "replace":
            parent[last] = draw(VALUES)
        elif action == "wrap":
            parent[last] = [parent[last]]
        elif isinstance(parent[last], dict):
            parent[last][draw(st.one_of(st.text(max_size=6), st.integers(0, 3)))] = draw(VALUES)
        elif isinstance(parent[last], list):
            parent[last].append(draw(VALUES))
    return data


@FUZZ
@given(mutated())
def test_mutated_red_files_never_crash(data):
    from faice.red.load import Document

    _check(Document("mutated.red.yml", data))


@settings(max_examples=60, deadline=None)
@given(mutated())
def test_mutated_files_as_text_round_trip_through_the_loader(data):
    """The same mutations written as JSON text: loader and validator agree, no crash."""
    try:
        text = json.dumps(data)
    except (TypeError, ValueError):
        return
    _check(parse_text("mutated.json", text))
