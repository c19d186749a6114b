"""Property-based fuzzing of load + validate: any input ends in success or a clean FaiceError.

Two sources of input: arbitrary YAML/JSON-ish text, and random mutations (delete, replace,
insert, wrap) of the valid corpus. The example counts are bounded so the file runs in seconds.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
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


# ---------------------------------------------------------------- the CLI on mutated files
#
# The valid corpus (tests/data/red/valid and the examples) mutated as text and bytes — byte
# flips, YAML structure (lines deleted, duplicated, re-indented; tokens such as brackets,
# quotes, anchors, aliases and tags inserted), deep nesting, alias bombs, truncation — and run
# through `faice validate` and `faice exec --dry-run` in-process. Every input ends with exit 0
# or a clear error naming the file; never an internal error, never a hang. Seeded, bounded.

ROOT = Path(__file__).resolve().parents[2]
CORPUS = sorted(DATA.iterdir()) + sorted((ROOT / "examples").glob("**/*.red.yml"))
TEXTS = [path.read_bytes() for path in CORPUS]
EXAMPLE_TIMEOUT_S = 10
TOKENS = [b"[", b"]", b"{", b"}", b'"', b"'", b": ", b"- ", b"&a ", b"*a", b"!!float ", b"!!binary ", b"!tag ",
          b"<<: *a", b"{{x}}", b"{{", b"$(sweep.x)", b"\t", b"\\ud800", b"\"\\ud800\"", b"9" * 5000, b"---\n", b"%YAML 1.1\n",
          b"\x00", b"\xff", b"\xed\xa0\x80", b"~", b"null", b"1e999", b".nan", b"0x" + b"f" * 400,
          b"? {a: {b: 1}}\n: x\n", b"{\n", b"? [a]\n: x\n", b"2020-13-45", b"!!set {a}", b"!!omap [a: 1]"]
BOMB = b"".join(
    b"%s: &%s [%s]\n" % (name, name, b",".join([b"*" + previous] * 9 if previous else [b'"lol"'] * 9))
    for previous, name in zip([b""] + [bytes([c]) for c in b"abcdefgh"], [bytes([c]) for c in b"abcdefghi"], strict=True)
)


@st.composite
def mutated_bytes(draw) -> bytes:
    text = bytearray(draw(st.sampled_from(TEXTS)))
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["flip", "token", "delete-line", "duplicate-line", "indent", "nest", "bomb", "alias", "truncate"]))
        position = draw(st.integers(0, max(0, len(text) - 1)))
        if kind == "flip" and text:
            text[position] = draw(st.integers(0, 255))
        elif kind == "token":
            text[position:position] = draw(st.sampled_from(TOKENS))
        elif kind in ("delete-line", "duplicate-line", "indent"):
            lines = bytes(text).split(b"\n")
            index = draw(st.integers(0, len(lines) - 1))
            if kind == "delete-line":
                del lines[index]
            elif kind == "duplicate-line":
                lines.insert(index, lines[index])
            else:
                lines[index] = b" " * draw(st.integers(1, 6)) + lines[index]
            text = bytearray(b"\n".join(lines))
        elif kind == "nest":
            depth = draw(st.sampled_from([50, 99, 101, 1000, 3000]))
            text[position:position] = b"[" * depth + b"]" * depth
        elif kind == "bomb":
            text[0:0] = BOMB
        elif kind == "alias":
            text[position:position] = draw(st.sampled_from([b"&a ", b"*a", b"&a [*a] ", b"<<: *a\n"]))
        elif kind == "truncate":
            del text[position:]
    return bytes(text)


class _Hang(BaseException):  # not an Exception: faice's own error handler must not catch it
    pass


def _run_cli(argv: list[str]) -> tuple[int, str]:
    import contextlib
    import io

    from faice.cli import main

    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse
            code = exc.code if isinstance(exc.code, int) else 2
    return code, err.getvalue()


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _alarm(signum, frame):
    raise _Hang()


@settings(max_examples=250, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture])
@given(mutated_bytes())
def test_validate_and_dry_run_end_cleanly_on_mutated_files(fuzz_dir, content):
    import signal

    from faice.secrets import REDACTOR

    path = fuzz_dir / "mutated.red.yml"
    path.write_bytes(content)
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(EXAMPLE_TIMEOUT_S)
    try:
        results = {}
        for argv in (["validate", str(path)], ["exec", "--dry-run", "--outdir", str(fuzz_dir / "out"), str(path)]):
            REDACTOR.clear()
            try:
                results[argv[0]] = _run_cli(argv)
            except _Hang:
                pytest.fail(f"faice {argv[0]} did not end within {EXAMPLE_TIMEOUT_S} s on:\n{content[:400]!r}")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    for command, (code, err) in results.items():
        assert code in (0, 1, 2), (command, code, err, content[:400])
        assert "internal error" not in err and "Traceback" not in err, (command, err, content[:400])
    code, err = results["validate"]
    if code != 0:  # a load or validation error names the file; exec stops at the same error
        assert str(path) in err, (err, content[:400])
        exec_code, exec_err = results["exec"]
        assert exec_code != 0 and str(path) in exec_err, (exec_err, content[:400])
