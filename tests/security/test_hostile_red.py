"""Hostile RED files: each attack ends in a clear error naming the file (and line), quickly and
without memory growth — never a hang, a RecursionError or an "internal error".

The alias bomb and the sweep bomb run in a child process with a memory cap and a timeout, so
a regression fails the test instead of taking the machine down.
"""

from __future__ import annotations

import contextlib
import io
import json
import resource
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from red_yaml import red_head

from faice.cli import main
from faice.errors import FaiceError
from faice.red.load import Document
from faice.red.validate import validate_red

MEMORY_CAP = 2 * 1024**3

RED_HEAD = red_head("echo") + """\
  inputs:
    message: {type: string, inputBinding: {position: 0}}
  outputs: {}
container: {engine: docker, settings: {image: {url: alpine:3.19}}}
outputs: {}
"""


def billion_laughs() -> str:
    """The classic YAML alias bomb: 9 levels of 9 aliases each, 10⁹ strings once expanded."""
    lines = ['a: &a ["lol lol lol lol lol lol lol lol lol lol lol", ' + ", ".join(['"lol"'] * 8) + "]"]
    for previous, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{previous}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def limited_faice(argv: list[str], warm_up: Path, timeout: float = 60) -> tuple[int, str, float]:
    """Run faice in a child with a 2 GiB memory cap: (exit code, stderr, seconds inside main).

    The valid file ``warm_up`` (same cli) is validated first, so the seconds count the hostile
    file, not imports or cwltool's first look at the tool."""
    code = textwrap.dedent(f"""
        import contextlib, io, sys, time
        from faice.cli import main
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(["validate", {str(warm_up)!r}]) == 0
        start = time.monotonic()
        code = main({argv!r})
        print(f"{{time.monotonic() - start:.3f}}")
        sys.exit(code)
    """)

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))

    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, preexec_fn=cap)
    except subprocess.TimeoutExpired:
        pytest.fail(f"faice {' '.join(argv)} did not end within {timeout} s")
    seconds = float(done.stdout.strip().splitlines()[-1]) if done.stdout.strip() else float("inf")
    return done.returncode, done.stderr, seconds


def valid_file(tmp_path: Path) -> Path:
    path = tmp_path / "valid.red.yml"
    path.write_text(RED_HEAD + "inputs:\n  message: hi\n")
    return path


def faice(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    return code, err.getvalue()


def assert_clear(code: int, err: str, path: Path, *needles: str) -> None:
    assert code == 1, err
    assert "internal error" not in err and "Traceback" not in err, err
    assert str(path) in err, err
    for needle in needles:
        assert needle in err, err


def test_yaml_alias_bomb_is_refused_in_well_under_a_second(tmp_path):
    path = tmp_path / "bomb.red.yml"
    path.write_text(billion_laughs())
    assert len(path.read_bytes()) < 1000
    for command in (["validate", str(path)], ["exec", "--dry-run", str(path)]):
        code, err, seconds = limited_faice(command, valid_file(tmp_path))
        assert_clear(code, err, path, "alias bomb", f"{path}:5:")  # e: the first alias past 10,000 values
        if command[0] == "validate":  # exec's time also counts importing the engines
            assert seconds < 1.0, seconds


def test_an_alias_bomb_of_long_text_is_refused_by_its_expanded_size(tmp_path):
    """9,000 aliases of one 1 MB string are fewer values than the limit but 9 GB once copied
    (validate took 38 s and 8.8 GB): refused at the alias that passes FAICE_MAX_RED_BYTES."""
    path = tmp_path / "text-bomb.red.yml"
    path.write_text('a: &a "' + "x" * 1_000_000 + '"\nb: [' + ", ".join(["*a"] * 9000) + "]\n")
    assert path.stat().st_size < 2_000_000
    for command in (["validate", str(path)], ["convert", "format", "--format=json", str(path)]):
        code, err, seconds = limited_faice(command, valid_file(tmp_path))
        assert_clear(code, err, path, "more than 67,108,864 characters", "alias bomb", f"{path}:2:", "b[66]")
        assert seconds < 5.0, seconds


def test_an_alias_inside_its_own_anchor_is_refused(tmp_path):
    """A cycle was silently read as null; it is refused where the alias is."""
    path = tmp_path / "loop.red.yml"
    path.write_text(RED_HEAD + "inputs: &loop {message: hi, again: [*loop]}\n")
    code, err = faice(["validate", str(path)])
    assert_clear(code, err, path, f"{path}:11:37", "alias *loop refers to the value that contains it (a cycle)")


@pytest.mark.parametrize("suffix", [".yml", ".json"])
def test_deep_nesting_gives_a_clear_error_not_a_recursion_error(tmp_path, suffix):
    path = tmp_path / f"deep{suffix}"
    if suffix == ".json":
        path.write_text('{"redVersion": "9",\n "inputs": {"message": ' + "[" * 1000 + "]" * 1000 + "}}")
    else:
        path.write_text(RED_HEAD + "inputs:\n  message: " + "[" * 1000 + "]" * 1000 + "\n")
    for command in ("validate", "exec"):
        code, err = faice([command, *(["--dry-run"] if command == "exec" else []), str(path)])
        assert_clear(code, err, path, "nested deeper than 100 levels", f"{path}:{2 if suffix == '.json' else 12}:")


def test_deep_data_given_to_the_validator_directly_is_a_validation_error():
    """The agency validates JSON it parsed itself: deep data must not end in RecursionError."""
    deep: list = []
    node = deep
    for _ in range(5000):
        node.append([])
        node = node[0]
    with pytest.raises(FaiceError, match="nested deeper than 100 levels"):
        validate_red(Document("RED data", {"redVersion": "9", "inputs": {"message": deep}}))


@pytest.mark.parametrize("suffix", [".yml", ".json"])
def test_huge_integers_are_refused(tmp_path, suffix):
    digits = "7" * 100_000
    path = tmp_path / f"huge{suffix}"
    if suffix == ".json":
        path.write_text('{"redVersion": "9",\n "inputs": {"message": ' + digits + "}}")
    else:
        path.write_text(RED_HEAD + "inputs:\n  message: " + digits + "\n")
    code, err = faice(["validate", str(path)])
    assert_clear(code, err, path, "integer has more than 100 digits", "inputs.message")
    assert len(err) < 1000  # the number is not echoed


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("!!float abc", "not a valid number"),
        ("!!int 12abc", "not a valid integer"),
        ("!!binary aGVsbG8=", "tag !!binary is not allowed"),
        ("!python/object:os.system ls", "tag !python/object:os.system is not allowed"),
        ("!custom text", "tag !custom is not allowed"),
        ('"\\ud800 lone surrogate"', "lone surrogate"),
    ],
)
def test_values_a_red_file_cannot_hold_are_refused_where_they_are(tmp_path, value, needle):
    path = tmp_path / "odd.red.yml"
    path.write_text(RED_HEAD + f"inputs:\n  message: {value}\n")
    code, err = faice(["validate", str(path)])
    assert_clear(code, err, path, f"{path}:12:12", needle, "inputs.message")


def test_lone_surrogate_in_json_is_refused_with_its_line(tmp_path):
    path = tmp_path / "surrogate.red.json"
    path.write_text('{"redVersion": "9",\n "inputs": {"message": "\\udc80"}}')
    code, err = faice(["validate", str(path)])
    assert_clear(code, err, path, f"{path}:2:24", "lone surrogate")


def test_sweep_bomb_is_refused_before_expansion(tmp_path):
    """~200 bytes of sweep asking for 10⁸ batches: refused at once, naming sweep and the count."""
    grid = "{" + ", ".join(f"p{i}: [0,1,2,3,4,5,6,7,8,9]" for i in range(8)) + "}"
    path = tmp_path / "sweep-bomb.red.yml"
    used = "".join(f"$(sweep.p{i})" for i in range(8))
    path.write_text(RED_HEAD + f'inputs:\n  message: "{used}"\nsweep:\n  grid: {grid}\n')
    for command in (["validate", str(path)], ["exec", "--dry-run", str(path)]):
        code, err, seconds = limited_faice(command, valid_file(tmp_path))
        assert_clear(code, err, path, "sweep", "100,000,000 batches", "FAICE_MAX_BATCHES")
        if command[0] == "validate":
            assert seconds < 1.0, seconds


def test_a_large_file_is_refused_before_it_is_read_whole(tmp_path, monkeypatch):
    monkeypatch.setenv("FAICE_MAX_RED_BYTES", "4096")
    path = tmp_path / "large.red.json"
    path.write_text(json.dumps({"redVersion": "9", "doc": "x" * 10_000}))
    code, err = faice(["validate", str(path)])
    assert_clear(code, err, path, "larger than 4,096 bytes", "FAICE_MAX_RED_BYTES")


def test_a_mapping_used_as_a_key_is_refused_where_it_is(tmp_path):
    """Found by the fuzz test: a mapping holding a mapping, used as a key, crashed hashing."""
    path = tmp_path / "key.red.yml"
    path.write_text(RED_HEAD + "inputs:\n  ? {message: {nested: 1}}\n  : hi\n")
    code, err = faice(["validate", str(path)])
    assert_clear(code, err, path, f"{path}:12:5", "a key must be plain text or a number, not a mapping or a list")
