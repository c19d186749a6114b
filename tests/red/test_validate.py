"""``faice validate`` and ``validate_red``: every problem, with file, line and key path.

The invalid corpus (tests/data/red/invalid/*.yml) has one file per check. Each file names the
expected key path and message fragment in ``# expect: PATH | FRAGMENT`` lines, and the line
the problem must point at ends with ``#!`` — the expected line number is read from the data,
never from the validator.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from red_yaml import red_head

from faice.cli import main
from faice.cwl.types import check_value
from faice.errors import ValidationError
from faice.red.load import load_mapping, parse_text
from faice.red.validate import validate_red

DATA = Path(__file__).resolve().parents[1] / "data" / "red"
INVALID = sorted((DATA / "invalid").glob("*.yml"))
VALID = sorted((DATA / "valid").iterdir())
ROOT = Path(__file__).resolve().parents[2]


def expectations(path: Path) -> tuple[list[tuple[str, str]], int | None]:
    lines = path.read_text().splitlines()
    expects = [tuple(text[len("# expect: ") :].split(" | ", 1)) for text in lines if text.startswith("# expect: ")]
    marker = next((i + 1 for i, line in enumerate(lines) if line.rstrip().endswith("#!")), None)
    return expects, marker


def reported(stderr: str, path: Path, key_path: str, fragment: str, line: int | None) -> bool:
    where = f"{path}:{line}:" if line else f"{path}: "
    key = f" {key_path}: " if key_path else " (top level): "
    return any(where in text and key in text and fragment in text for text in stderr.splitlines())


def test_corpus_covers_every_check():
    assert len(INVALID) >= 40
    for path in INVALID:
        expects, _ = expectations(path)
        assert expects, f"{path.name} names no expected problem"


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_file_reports_key_path_line_and_expectation(path, capsys):
    expects, line = expectations(path)
    assert main(["validate", str(path)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "Traceback" not in captured.err
    for key_path, fragment in expects:
        assert reported(captured.err, path, key_path, fragment, line), captured.err


@pytest.mark.parametrize("name", ["float-as-string", "batches-missing-input", "nvidia-docker",
                                  "undeclared-input-reference"])
def test_invalid_file_through_real_cli(name):
    path = DATA / "invalid" / f"{name}.yml"
    expects, line = expectations(path)
    result = subprocess.run(
        [sys.executable, "-m", "faice", "validate", str(path)], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 1
    assert result.stderr.startswith("faice: error: ")
    for key_path, fragment in expects:
        assert reported(result.stderr, path, key_path, fragment, line), result.stderr


def _expected_batches(path: Path) -> int | None:
    data = load_mapping(str(path)).data
    if "sweep" in data:
        return None  # the count depends on the sweep expansion, tested with the sweep module
    return len(data["batches"]) if "batches" in data else 1


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.name)
def test_valid_files_are_accepted(path, capsys):
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    version = load_mapping(str(path)).data["redVersion"]
    count = _expected_batches(path)
    assert out.startswith(f"{path} is valid (RED {version}, ")
    if count is not None:
        assert f", {count} batch{'es' if count != 1 else ''})" in out


def test_valid_file_through_real_cli():
    result = subprocess.run(
        [sys.executable, "-m", "faice", "validate", "tests/data/red/valid/multi_batch.json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "tests/data/red/valid/multi_batch.json is valid (RED 9, 3 batches)\n"


def test_variables_stay_unfilled_and_need_no_values(capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", None)  # any prompt would crash
    assert main(["validate", str(DATA / "valid" / "ml-guide.red8.json")]) == 0
    assert "{{" not in capsys.readouterr().out


MANY = red_head("echo") + """\
  inputs:
    n: {type: int, inputBinding: {position: 0}}
    s: {type: string, inputBinding: {position: 1}}
  outputs:
    o: {type: File, outputBinding: {glob: /abs}}
batches:
  - inputs: {n: "1", s: x}
  - inputs: {n: 2, t: y}
container: {engine: docker, settings: {image: {url: img}, ram: 10}}
execution: {engine: ccfaice, settings: {parallel: 2}}
"""


def test_every_problem_of_a_file_is_reported(tmp_path, capsys):
    path = tmp_path / "many.red.yml"
    path.write_text(MANY)
    assert main(["validate", str(path)]) == 1
    err = capsys.readouterr().err
    expected = [
        (10, "cli.outputs.o.outputBinding.glob", "relative"),
        (12, "batches[0].inputs.n", "expected an integer (cli type int), got string '1'"),
        (13, "batches[1].inputs.t", "is not an input of cli"),
        (13, "batches[1].inputs", "'s' is a required property"),
        (14, "container.settings.ram", "expected a number >= 256"),
        (15, "execution.settings.parallel", "unknown key 'parallel'"),
    ]
    assert f"is not valid ({len(expected)} problems):" in err
    for line, key_path, fragment in expected:
        assert reported(err, path, key_path, fragment, line), (key_path, err)
    lines = [int(text.split(":")[1]) for text in err.splitlines()[1:]]
    assert lines == sorted(lines), "problems are listed in file order"


def test_validation_error_carries_problems_with_positions(tmp_path):
    path = tmp_path / "many.red.yml"
    path.write_text(MANY)
    with pytest.raises(ValidationError) as info:
        validate_red(load_mapping(str(path)))
    paths = {problem.path for problem in info.value.problems}
    assert ("batches", 0, "inputs", "n") in paths
    assert all(p.file == str(path) and p.line for p in info.value.problems)


def test_json_output_lists_problems(tmp_path, capsys):
    path = tmp_path / "many.red.yml"
    path.write_text(MANY)
    assert main(["validate", "--json", str(path)]) == 1
    result = json.loads(capsys.readouterr().out)
    assert result["valid"] is False
    assert {"file", "path", "line", "column", "message"} <= set(result["problems"][0])
    assert any(p["path"] == "batches[1].inputs.t" and p["line"] == 13 for p in result["problems"])


def test_json_output_when_valid(capsys):
    assert main(["validate", "--json", str(DATA / "valid" / "multi_batch.json")]) == 0
    assert json.loads(capsys.readouterr().out) == {"valid": True, "redVersion": "9", "batches": 3, "problems": []}


def test_json_output_for_unreadable_file(tmp_path, capsys):
    path = tmp_path / "broken.yml"
    path.write_text("redVersion: '9'\ncli: [\n")
    assert main(["validate", "--json", str(path)]) == 1
    result = json.loads(capsys.readouterr().out)
    assert result["valid"] is False and "invalid YAML" in result["problems"][0]["message"]


def test_json_file_problems_name_line_column_and_key_path(tmp_path, capsys):
    data = json.loads((DATA / "valid" / "minimal.json").read_text())
    data["inputs"]["some_string"] = 5
    path = tmp_path / "bad.json"
    text = json.dumps(data, indent=4)
    path.write_text(text)
    lines = text.splitlines()
    line = max(i for i, t in enumerate(lines, 1) if '"some_string": 5' in t)
    column = lines[line - 1].index('"some_string"') + 1
    assert main(["validate", str(path)]) == 1
    expected = f"{path}:{line}:{column}: inputs.some_string: expected a string (cli type string), got integer 5"
    assert expected in capsys.readouterr().err


def invalid_grepwrap(path: Path, capsys, old: str, new: str) -> str:
    """The valid grepwrap example with ``old`` (which it holds) replaced by ``new``, written to
    ``path``: ``faice validate`` refuses it; what it said on stderr."""
    text = (DATA / "valid" / "grepwrap.red.yml").read_text()
    assert old in text
    path.write_text(text.replace(old, new))
    assert main(["validate", str(path)]) == 1
    return capsys.readouterr().err


def test_protected_values_never_appear_in_messages(tmp_path, capsys):
    err = invalid_grepwrap(
        tmp_path / "secret.red.yml", capsys,
        'settings: {image: {url: "docker.io/curiouscontainers/grepwrap"}}',
        'settings: {image: {url: "docker.io/curiouscontainers/grepwrap", auth: {username: u, password: 9876543}}}',
    )
    assert "container.settings.image.auth.password: expected a string" in err
    assert "9876543" not in err


def test_missing_file_and_yaml_syntax_errors_are_clean(tmp_path, capsys):
    assert main(["validate", str(tmp_path / "nope.yml")]) == 1
    assert "no such file" in capsys.readouterr().err
    path = tmp_path / "syntax.yml"
    path.write_text("redVersion: '9'\ncli:\n  inputs: {a: [}\n")
    assert main(["validate", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{path}:3:" in err and "Traceback" not in err


ACCESS = red_head("cat") + """\
  inputs:
    a: {type: File, inputBinding: {position: 0}}
    b: {type: File, inputBinding: {position: 1}}
  outputs: {}
inputs:
  a: {class: File, connector: {command: file, access: {path: "{{a_path}}"}}}
  b: {class: File, connector: {command: file, access: {path: B_PATH}}}
container: {engine: docker, settings: {image: {url: x}}}
"""


def test_check_access_probes_every_connector_with_filled_variables(tmp_path, capsys):
    """Real connectors (the built-in file connector) validate every input, all failures listed."""
    present = tmp_path / "present.txt"
    present.write_text("x")
    variables = tmp_path / "vars.yml"
    variables.write_text(f"a_path: {tmp_path / 'missing-a.txt'}\n")
    path = tmp_path / "access.red.yml"
    path.write_text(ACCESS.replace("B_PATH", str(tmp_path / "missing-b.txt")))
    args = ["validate", "--check-access", "--non-interactive", "--variables", str(variables), str(path)]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert f"{path}: inputs.a: " in err
    assert "missing-a.txt" not in err, "a variable value is protected, even in connector errors"
    assert f"{path}: inputs.b: " in err and "missing-b.txt" in err
    variables.write_text(f"a_path: {present}\n")
    path.write_text(ACCESS.replace("B_PATH", str(present)))
    assert main(args) == 0
    assert capsys.readouterr().out == f"{path} is valid (RED 9, 1 batch)\n"


def test_stdin_is_accepted(monkeypatch, capsys):
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO((DATA / "valid" / "grepwrap.red.yml").read_text()))
    assert main(["validate", "-"]) == 0
    assert capsys.readouterr().out.startswith("<stdin> is valid (RED 9, 1 batch)")


@pytest.mark.parametrize(
    ("cli_type", "value", "expected"),
    [
        ("float", 1, None),
        ("float", 0.5, None),
        ("double", True, "expected a number (cli type double), got boolean true"),
        ("int", True, "expected an integer (cli type int), got boolean true"),
        ("long", 2**40, None),
        ("int", 2**31, "expected an integer from -2147483648 to 2147483647 (cli type int), got integer 2147483648"),
        ("long", -(2**63) - 1, "expected an integer from -9223372036854775808 to 9223372036854775807 (cli type long), "
                               "got integer -9223372036854775809"),
        ("int[]", [1, 2**40], "item 1: expected an integer from -2147483648 to 2147483647 (cli type int[]), "
                              "got integer 1099511627776"),
        ("int", 1.5, "expected an integer (cli type int), got number 1.5"),
        ("string", "x", None),
        ("string", 3, "expected a string (cli type string), got integer 3"),
        ("boolean", "true", "expected a boolean (true or false) (cli type boolean), got string 'true'"),
        ("int?", None, None),
        ("int", None, "expected a value (cli type int is not optional), got null"),
        ("string[]", ["a", "b"], None),
        ("string[]", "a", "expected a list (cli type string[]), got string 'a'"),
        ("int[]?", [1, "2"], "item 1: expected an integer (cli type int[]?), got string '2'"),
        ("float", [1.0], "expected a number (cli type float), got a list"),
        ("File", {"class": "File", "connector": {}}, None),
        ("File", {"class": "Directory"}, "expected class File (cli type File), got class Directory"),
        ("Directory", "path/x", "expected a Directory object ({class: Directory, connector: ...}) (cli type Directory), got string 'path/x'"),
        ("File[]", [{"class": "File"}, {}], "item 1: expected class File (cli type File[]), got no class"),
        ("complex", 1, "cannot check the value: 'complex' is not a RED cli type"),
    ],
)
def test_check_value(cli_type, value, expected):
    assert check_value(cli_type, value) == expected


def test_cwltool_checks_the_embedded_tool():
    from faice.cwl.tool import cli_problems, load_cli

    cli = json.loads((DATA / "valid" / "input_output.json").read_text())["cli"]
    tool, problems = load_cli(cli, "experiment.red.json")
    assert problems == []
    assert sorted(i["id"].split("/")[-1] for i in tool.tool["inputs"]) == ["data", "script"]
    broken = dict(cli, inputs={"script": {"type": "Fil", "inputBinding": {"position": 0}}})
    [(path, message)] = cli_problems(broken, "experiment.red.json")
    assert path == ("cli", "inputs", "script")
    assert message.startswith("cwltool: ") and "Fil" in message


def test_parameter_references_fail_validate_not_the_dry_run(tmp_path):
    """A glob naming an undeclared input is a validation problem (file, line, key path), and
    an expression only cwltool can evaluate fails ``exec --dry-run`` without a traceback."""
    path = DATA / "invalid" / "undeclared-input-reference.yml"
    dry = subprocess.run([sys.executable, "-m", "faice", "exec", str(path), "--dry-run"], capture_output=True,
                         text=True, cwd=tmp_path, timeout=120)
    assert dry.returncode == 1 and "Traceback" not in dry.stderr, dry.stderr
    assert f"{path}:13:" in dry.stderr and "cli.outputs.log.outputBinding.glob" in dry.stderr
    broken = tmp_path / "evaluated.red.yml"  # validate cannot know that an int has no field
    broken.write_text(path.read_text().replace("$(inputs['run_name'])", "$(inputs.epochs.nope)"))
    assert subprocess.run([sys.executable, "-m", "faice", "validate", str(broken)], capture_output=True,
                          cwd=tmp_path, timeout=120).returncode == 0
    dry = subprocess.run([sys.executable, "-m", "faice", "exec", str(broken), "--dry-run"], capture_output=True,
                         text=True, cwd=tmp_path, timeout=120)
    assert dry.returncode == 1 and dry.stderr.startswith("faice: error: "), dry.stderr
    assert "Traceback" not in dry.stderr and "inputs.epochs.nope" in dry.stderr


def test_unknown_red_version_is_not_checked_further():
    document = parse_text("old.yml", "redVersion: '7'\ncli: {}\ncontainer: {engine: nvidia-docker}\n")
    with pytest.raises(ValidationError) as info:
        validate_red(document)
    [problem] = info.value.problems
    assert problem.path == ("redVersion",) and problem.line == 1
    assert 'expected "8" or "9"' in problem.message


def test_non_string_keys_in_cli_are_reported_not_crashed_on(tmp_path, capsys):
    path = tmp_path / "keys.red.yml"
    err = invalid_grepwrap(
        path, capsys,
        '    query_term: {type: "string", inputBinding: {position: 0}}',
        '    query_term: {type: "string", inputBinding: {position: 0}}\n    1: {type: "string?", inputBinding: {}}',
    )
    assert f"{path}:9:5: cli.inputs: key 1 (int) is not a string; quote it" in err
