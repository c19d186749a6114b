"""The CLI shell: help, version, exit codes, lazy imports, completion, one error handler."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from faice import __version__
from faice.cli import main

HEAVY_MODULES = ("cwltool", "docker", "boto3", "paramiko", "asyncssh", "requests", "ruamel", "rich", "jsonschema")


def _imported_modules(*args: str) -> set[str]:
    code = (
        "import sys, json\n"
        "from faice.cli import main\n"
        "try:\n"
        f"    main({list(args)!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(json.dumps(sorted(m.split('.')[0] for m in sys.modules)), file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(json.loads(result.stderr.strip().splitlines()[-1]))


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["exec", "--help"], ["validate", "--help"]])
def test_help_and_version_import_nothing_heavy(args):
    imported = _imported_modules(*args)
    assert not imported & set(HEAVY_MODULES), imported & set(HEAVY_MODULES)


def test_version_matches_package(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"faice {__version__}"


def test_no_arguments_prints_help_and_succeeds(capsys):
    assert main([]) == 0
    assert "commands:" in capsys.readouterr().out


def test_unknown_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["frobnicate"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_python_dash_m_runs_the_same_cli():
    result = subprocess.run([sys.executable, "-m", "faice", "--version"], capture_output=True, text=True)
    assert result.returncode == 0
    assert result.stdout.strip() == f"faice {__version__}"


@pytest.mark.parametrize(
    "command",
    [
        ["validate"],
        ["exec"],
        ["convert", "format"],
        ["convert", "cwl"],
        ["convert", "batches"],
        ["convert", "sweep"],
        ["schema", "list"],
        ["schema", "show"],
        ["schema", "validate"],
        ["status"],
        ["logs"],
        ["cancel"],
        ["list"],
        ["agency", "serve"],
        ["agency", "user", "add"],
    ],
)
def test_every_command_help_shows_an_example(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out
    assert "faice " + command[0] in out.split("examples:", 1)[1]


def test_upstream_agent_command_points_to_exec(capsys):
    assert main(["agent", "red", "x.red"]) == 2
    err = capsys.readouterr().err
    assert "faice exec" in err
    assert "Traceback" not in err


def test_missing_file_is_one_clear_line_without_traceback(tmp_path):
    missing = tmp_path / "nope.red.yml"
    result = subprocess.run(
        [sys.executable, "-m", "faice", "convert", "cwl", str(missing)], capture_output=True, text=True
    )
    assert result.returncode == 1
    assert str(missing) in result.stderr
    assert "Traceback" not in result.stderr


def test_bash_completion_completes_commands_and_flags(tmp_path):
    script = tmp_path / "faice.bash"
    result = subprocess.run([sys.executable, "-m", "faice", "completion", "bash"], capture_output=True, text=True)
    script.write_text(result.stdout)
    probe = (
        f"source {script}\n"
        "COMP_WORDS=(faice convert fo); COMP_CWORD=2; _faice_complete; echo \"${COMPREPLY[@]}\"\n"
        "COMP_WORDS=(faice exec --dry); COMP_CWORD=2; _faice_complete; echo \"${COMPREPLY[@]}\"\n"
    )
    lines = subprocess.run(["bash", "-c", probe], capture_output=True, text=True).stdout.splitlines()
    assert lines == ["format", "--dry-run"]


def test_tests_run_in_an_empty_directory_outside_the_checkout():
    """conftest gives every test a fresh working directory: what a checkout holds (the demo's
    ./faice-runs, which `faice status` and `faice list` read) cannot change a test's outcome."""
    from pathlib import Path

    checkout = Path(__file__).resolve().parents[2]
    assert checkout not in [Path.cwd(), *Path.cwd().parents]
    assert not Path("faice-runs").exists()


@pytest.mark.parametrize(("batches", "where"), [
    ("abc", "batches: expected a list of batch entries, got str"),
    (["b-1", {"id": "b-2"}], "batches[0]: expected an object, got str"),
    ([{"id": "b-1", "parameters": ["lr", 1]}], "batches[0].parameters: expected an object, got list"),
])
@pytest.mark.foreign_records
def test_status_and_list_of_a_run_json_of_wrong_types_say_where(tmp_path, capsys, batches, where):
    """A hand-edited run.json: one line naming the file and the key, not an internal error."""
    (tmp_path / "run.json").write_text(json.dumps({"runId": "r", "state": "succeeded", "batches": batches}))
    for command in ("status", "list"):
        assert main([command, "--outdir", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert f"{tmp_path / 'run.json'}: {where}" in err and "internal error" not in err, err


@pytest.mark.foreign_records
def test_status_lists_the_local_runs_past_a_damaged_one(tmp_path, capsys):
    """``faice status`` in a directory with ./faice-runs: a run.json with wrong types and a
    dangling link there are shown or skipped, the other runs still listed."""
    from pathlib import Path

    runs = Path("faice-runs")
    (runs / "good").mkdir(parents=True)
    (runs / "good" / "run.json").write_text(json.dumps({"runId": "g", "state": "succeeded", "counts": {"succeeded": 1}}))
    (runs / "odd").mkdir()
    (runs / "odd" / "run.json").write_text(json.dumps({"state": [1], "counts": ["x"]}))
    (runs / "gone").symlink_to(tmp_path / "nowhere")
    assert main(["status"]) == 0
    out, err = capsys.readouterr()
    assert "faice-runs/good  succeeded" in out and "faice-runs/odd" in out and "internal error" not in err, err


@pytest.mark.foreign_records
def test_status_and_list_of_a_run_dir_show_its_text_inert(tmp_path, capsys):
    """Batch ids, states and parameters of run.json reach the terminal with their escape
    sequences shown, not acted on; an index or state of another type is shown as it is."""
    entries = [{"id": "b-\x1b]0;PWNED\x07", "index": {"a": 1}, "state": ["x"], "parameters": {"k\x1b[2J": "v"}}]
    (tmp_path / "run.json").write_text(json.dumps({"runId": "r\x1b[1A", "state": "succeeded", "batches": entries}))
    for command in ("status", "list"):
        assert main([command, "--outdir", str(tmp_path)]) == 0
        out, err = capsys.readouterr()
        assert "\x1b" not in out and "\\x1b]0;PWNED" in out and "internal error" not in err, out + err
