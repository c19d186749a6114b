"""{{variables}}: syntax, where they may appear, and filling them from files, a real keyring
(keyrings.alt file backend) and a real terminal prompt; every value is redacted."""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import sys
import textwrap
from pathlib import Path

import pytest

from faice.errors import VariableError, format_key_path
from faice.red.experiment import Experiment
from faice.red.sweep import expand_batches
from faice.red.variables import VariableSources, fill_experiment, find_variables, variable_problems
from faice.secrets import REDACTOR

SECRET = "p@ss.*(w)rd\\\"x"  # regex specials, a backslash and a quote (JSON-escaped differently)


@pytest.fixture(autouse=True)
def _fresh_redactor():
    REDACTOR.clear()
    yield
    REDACTOR.clear()


def red() -> dict:
    """A RED document with variables in connector access, the image auth and the execution."""
    return {
        "redVersion": "9",
        "cli": {
            "cwlVersion": "v1.0", "class": "CommandLineTool", "baseCommand": "cat",
            "inputs": {"data": {"type": "File", "inputBinding": {"position": 0}}},
            "outputs": {},
        },
        "inputs": {"data": {"class": "File", "connector": {"command": "red-connector-ssh", "access": {
            "host": "{{ssh_host}}",
            "port": "{{ssh_port}}",
            "auth": {"_username": "{{ssh_user}}", "password": "{{ssh_password}}"},
            "filePath": "/data/{{dataset}}/input.txt",
        }}}},
        "outputs": {},
        "container": {"engine": "docker", "settings": {
            "image": {"url": "python:3.12", "auth": {"username": "reg", "password": "{{ssh_password}}"}},
            "ram": 256,
        }},
    }


def experiment(data: dict | None = None) -> Experiment:
    data = data or red()
    return Experiment("exp.red.yml", data, expand_batches(data, "exp.red.yml"))


def sources(tmp_path: Path, values: dict | None, *files: str, **kwargs) -> VariableSources:
    paths = list(files)
    if values is not None:
        path = tmp_path / f"vars{len(list(tmp_path.glob('vars*')))}.yml"
        path.write_text(json.dumps(values))
        paths.append(str(path))
    return VariableSources(files=paths, **kwargs)


ALL = {"ssh_host": "127.0.0.1", "ssh_port": 2222, "ssh_user": "alice", "ssh_password": SECRET, "dataset": "mnist"}


# ---------------------------------------------------------------- syntax


def test_find_variables_returns_the_literal_names_in_order():
    assert find_variables("pre{{a}}mid{{ b }}post{{a}}") == ["a", " b "]
    assert find_variables("no variables, {single} braces") == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{{}}", "empty variable name"),
        ("x{{a{{b}}", "nested or extra braces"),
        ("{{a", "never closed"),
        ("a}}", "closes no"),
        ("{{{a}}}", "nested or extra braces"),
    ],
)
def test_find_variables_rejects_bad_braces_precisely(text, expected):
    with pytest.raises(ValueError, match=expected):
        find_variables(text)


def test_variable_problems_allow_access_and_auth_only():
    data = red()
    data["inputs"]["plain"] = "{{not_here}}"
    data["inputs"]["data"]["connector"]["access"]["filePath"] = "/x/{{broken"
    problems = {format_key_path(p.path): p.message for p in variable_problems(data, "exp.red.yml")}
    assert set(problems) == {"inputs.plain", "inputs.data.connector.access.filePath"}
    assert "only allowed below an access or auth key" in problems["inputs.plain"]
    assert "never closed" in problems["inputs.data.connector.access.filePath"]


# ---------------------------------------------------------------- filling from files


def test_fill_from_variables_files_keeps_types_and_later_files_win(tmp_path, no_keyring_env):
    first = _write(tmp_path / "a.yml", dict(ALL, dataset="cifar"))
    second = _write(tmp_path / "b.yml", {"dataset": "mnist"})
    exp = experiment()
    fill_experiment(exp, VariableSources([str(first), str(second)]))
    access = exp.batches[0].inputs["data"]["connector"]["access"]
    assert access["filePath"] == "/data/mnist/input.txt"
    assert access["port"] == 2222 and type(access["port"]) is int
    assert access["host"] == "127.0.0.1"
    # protected keys are normalised for the engines; the password is filled everywhere
    assert access["auth"] == {"username": "alice", "password": SECRET}
    assert exp.data["container"]["settings"]["image"]["auth"]["password"] == SECRET
    assert "{{" not in json.dumps(exp.data)


def _write(path: Path, values: dict) -> Path:
    path.write_text(json.dumps(values))
    return path


def test_sources_come_from_the_upstream_option_names():
    from faice.cli.options import variable_sources

    args = argparse.Namespace(variables=["a.yml", "b.yml"], keyring_service="lab", non_interactive=True)
    assert variable_sources(args) == VariableSources(["a.yml", "b.yml"], "lab", True)
    assert variable_sources(argparse.Namespace()) == VariableSources([], "red", False)


def test_a_bad_variables_file_names_the_file_and_key(tmp_path, no_keyring_env):
    bad = tmp_path / "bad.yml"
    bad.write_text("ssh_host: [1, 2]\n")
    with pytest.raises(VariableError, match=r"bad\.yml: ssh_host: expected a string, number or boolean"):
        fill_experiment(experiment(), VariableSources([str(bad)], non_interactive=True))


def test_addresses_are_not_secrets_unless_declared(tmp_path, no_keyring_env):
    """A variable used only as host, port or username is an address: errors name it. Under a
    `_` key, or used anywhere else as well, it stays protected."""
    data = red()
    access = data["inputs"]["data"]["connector"]["access"]
    access["auth"]["username"] = access["auth"].pop("_username")  # as the examples write it
    access["host"] = "{{ssh_host}}.example.org"
    exp = experiment(data)
    values = {**ALL, "ssh_host": "datahost", "ssh_port": 2222, "ssh_user": "alice-user", "unused": "unused-value"}
    fill_experiment(exp, sources(tmp_path, values))
    assert REDACTOR.redact("login refused for alice-user@datahost.example.org:2222") == \
        "login refused for alice-user@datahost.example.org:2222"
    assert REDACTOR.redact(f"{SECRET} mnist unused-value") == "******** ******** ********"
    REDACTOR.clear()
    data["inputs"]["data"]["connector"]["access"]["auth"]["_username"] = data["inputs"]["data"]["connector"][
        "access"]["auth"].pop("username")  # declared protected
    fill_experiment(experiment(data), sources(tmp_path, values))
    assert REDACTOR.redact("user alice-user") == "user ********"


def test_every_filled_value_is_redacted_including_escaped_forms(tmp_path, no_keyring_env):
    exp = experiment()
    fill_experiment(exp, sources(tmp_path, ALL))
    text = f"failed with {SECRET} / {json.dumps(SECRET)} / {json.dumps({'p': SECRET})} user alice on mnist"
    redacted = REDACTOR.redact(text)
    assert SECRET not in redacted
    assert json.dumps(SECRET)[1:-1] not in redacted
    assert "alice" not in redacted and "mnist" not in redacted  # every variable value is protected
    assert redacted.count("********") >= 3
    # the regex specials were escaped: nothing else is over-matched
    assert REDACTOR.redact("pass word (w) rd") == "pass word (w) rd"


# ---------------------------------------------------------------- unresolved


def test_non_interactive_lists_every_unresolved_name_at_once(tmp_path, keyring_env):
    with pytest.raises(VariableError) as caught:
        fill_experiment(experiment(), sources(tmp_path, {"ssh_host": "h"}, non_interactive=True))
    message = str(caught.value)
    for name in ("ssh_port", "ssh_user", "ssh_password", "dataset"):
        assert name in message
    assert "ssh_host" not in message.split("resolved")[1].split("hint")[0]
    assert "inputs.data.connector.access.port" in message
    assert "--variables" in message


def test_cli_error_output_masks_filled_values(tmp_path, no_keyring_env, capsys, monkeypatch):
    """Through the real CLI error handler: an error quoting a filled value (raw or JSON-escaped)
    is printed as one line with the value masked, exit 1, no traceback."""
    import faice.cli.commands.convert as convert
    from faice.cli import main
    from faice.errors import ConnectorError

    fill_experiment(experiment(), sources(tmp_path, ALL))

    def failing_conversion(args):
        raise ConnectorError(f"login refused for {SECRET} (sent {json.dumps({'password': SECRET})})")

    monkeypatch.setattr(convert, "convert_format", failing_conversion)
    code = main(["convert", "format", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("faice: error: login refused for ******** (sent {\"password\": \"********\"})")
    assert SECRET not in err and json.dumps(SECRET)[1:-1] not in err and "Traceback" not in err


# ---------------------------------------------------------------- keyring


def test_fill_from_a_real_keyring(tmp_path, keyring_env):
    import keyring

    for name, value in ALL.items():
        keyring.set_password("lab", name, str(value))
    exp = experiment()
    fill_experiment(exp, VariableSources([], keyring_service="lab", non_interactive=True))
    access = exp.batches[0].inputs["data"]["connector"]["access"]
    assert access["port"] == 2222  # keyring text converted for the integer field
    assert access["auth"]["password"] == SECRET
    assert REDACTOR.redact(SECRET) == "********"


def test_variables_file_wins_over_keyring(tmp_path, keyring_env):
    import keyring

    for name, value in ALL.items():
        keyring.set_password("red", name, str(value))
    exp = experiment()
    fill_experiment(exp, sources(tmp_path, {"dataset": "from-file"}, non_interactive=True))
    assert exp.batches[0].inputs["data"]["connector"]["access"]["filePath"] == "/data/from-file/input.txt"


def test_no_keyring_backend_gives_one_hint_and_files_still_work(tmp_path, no_keyring_env, capsys):
    exp = experiment()
    with pytest.raises(VariableError) as caught:
        fill_experiment(exp, sources(tmp_path, {"ssh_host": "h", "ssh_port": 1}, non_interactive=True))
    err = capsys.readouterr().err
    assert err.count("hint: no usable keyring") == 1
    assert "Traceback" not in err
    assert "ssh_user" in str(caught.value) and "ssh_host" not in str(caught.value).split("\n", 1)[1]
    # with everything in files the keyring is never asked and no hint appears
    exp = experiment()
    fill_experiment(exp, sources(tmp_path, ALL, non_interactive=True))
    assert capsys.readouterr().err == ""


def test_no_variables_means_no_sources_needed(no_keyring_env, capsys):
    data = red()
    data["inputs"]["data"]["connector"]["access"] = {"host": "h", "port": 22, "auth": {"_username": "u", "password": "pw-literal"}, "filePath": "/x"}
    data["container"]["settings"]["image"].pop("auth")
    exp = experiment(data)
    fill_experiment(exp, None)
    assert exp.batches[0].inputs["data"]["connector"]["access"]["auth"] == {"username": "u", "password": "pw-literal"}
    assert REDACTOR.redact("pw-literal") == "********"
    assert capsys.readouterr().err == ""


def test_ids_do_not_change_when_variables_are_filled(tmp_path, no_keyring_env):
    exp = experiment()
    ids = [b.id for b in exp.batches]
    fill_experiment(exp, sources(tmp_path, ALL))
    assert [b.id for b in exp.batches] == ids
    other = experiment(copy.deepcopy(red()))
    fill_experiment(other, sources(tmp_path, dict(ALL, ssh_password="other")))
    assert [b.id for b in other.batches] == ids


# ---------------------------------------------------------------- terminal prompt


DRIVER = textwrap.dedent("""
    import hashlib, json, sys
    from faice.red.experiment import Experiment
    from faice.red.load import load_mapping, to_plain
    from faice.red.sweep import expand_batches
    from faice.red.variables import VariableSources, fill_experiment
    from faice.secrets import REDACTOR

    data = to_plain(load_mapping(sys.argv[1]).data)
    exp = Experiment(sys.argv[1], data, expand_batches(data, sys.argv[1]))
    fill_experiment(exp, VariableSources(sys.argv[2:]))
    access = exp.batches[0].inputs["data"]["connector"]["access"]
    print("RESULT", json.dumps({
        "port": access["port"],
        "host": access["host"],
        "password_sha": hashlib.sha256(access["auth"]["password"].encode()).hexdigest(),
        "masked": REDACTOR.redact("pw=" + access["auth"]["password"]),
    }))
""")


def _spawn(tmp_path: Path, env: dict, *files: str):
    pexpect = pytest.importorskip("pexpect")
    red_file = tmp_path / "exp.red.json"
    red_file.write_text(json.dumps(red()))
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    child = pexpect.spawn(
        sys.executable, [str(driver), str(red_file), *files], env=env, encoding="utf-8", timeout=30,
        cwd=str(Path(__file__).resolve().parents[2]),
    )
    return pexpect, child


def test_prompt_on_a_terminal_hides_protected_values_and_offers_the_keyring(tmp_path, keyring_env):
    """A real pseudo-terminal: getpass must not echo, plain values are read with a prompt, and
    answering 'y' stores the prompted values in the (real, file-backed) keyring."""
    vars_file = _write(tmp_path / "v.yml", {"ssh_host": "127.0.0.1", "dataset": "mnist"})
    pexpect, child = _spawn(tmp_path, keyring_env, str(vars_file))
    child.expect_exact("Asking for variables:")
    child.expect_exact("ssh_port: ")
    child.sendline("2222")
    child.expect_exact("ssh_user (protected): ")  # under the protected key _username
    child_echo_of_port = child.before  # plain input is echoed: the check below is not vacuous
    child.sendline("alice")
    child.expect_exact("ssh_password (protected): ")
    typed_so_far = child.before
    child.sendline(SECRET)
    child.expect_exact("Store 3 values in keyring 'red'? [y/N] ")
    typed_so_far += child.before
    child.sendline("y")
    child.expect_exact("Stored 3 values in keyring 'red'.")
    child.expect("RESULT (.*)\r\n")
    result = json.loads(child.match.group(1))
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert SECRET not in typed_so_far and "alice" not in typed_so_far  # no echo of protected input
    assert "2222" in child_echo_of_port
    assert result["port"] == 2222 and result["host"] == "127.0.0.1"
    assert result["password_sha"] == hashlib.sha256(SECRET.encode()).hexdigest()
    assert result["masked"] == "pw=********"

    import keyring

    assert keyring.get_password("red", "ssh_password") == SECRET
    assert keyring.get_password("red", "ssh_port") == "2222"
    assert keyring.get_password("red", "ssh_host") is None  # came from the file, not prompted

    # a second run finds everything in the keyring and asks nothing
    pexpect, child = _spawn(tmp_path, keyring_env, str(vars_file))
    child.expect("RESULT (.*)\r\n")
    assert "Asking" not in child.before
    assert json.loads(child.match.group(1))["password_sha"] == result["password_sha"]
    child.expect(pexpect.EOF)


def test_prompt_without_keyring_skips_the_offer(tmp_path, no_keyring_env):
    vars_file = _write(tmp_path / "v.yml", {k: v for k, v in ALL.items() if k != "ssh_password"})
    pexpect, child = _spawn(tmp_path, no_keyring_env, str(vars_file))
    child.expect_exact("hint: no usable keyring")
    child.expect_exact("ssh_password (protected): ")
    child.sendline("pw")
    child.expect("RESULT (.*)\r\n")
    assert "Store" not in child.before
    child.expect(pexpect.EOF)


def test_exec_with_stdin_not_a_terminal_never_prompts(tmp_path, no_keyring_env):
    """The real `faice exec` in a subprocess whose stdin is a pipe: no prompt, every name listed."""
    import subprocess

    red_file = tmp_path / "exp.red.json"
    red_file.write_text(json.dumps(red()))
    vars_file = _write(tmp_path / "v.yml", {"ssh_host": "host.example", "ssh_password": SECRET})
    done = subprocess.run(
        [str(Path(sys.executable).parent / "faice"), "exec", str(red_file), "--variables", str(vars_file)],
        input="", capture_output=True, text=True, env=no_keyring_env, timeout=120,
    )
    assert done.returncode == 1, done.stderr
    assert "stdin is not a terminal" in done.stderr
    assert all(name in done.stderr for name in ("ssh_port", "ssh_user", "dataset"))
    assert "Asking" not in done.stdout + done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert str(red_file) in done.stderr


def test_exec_non_interactive_lists_all_names_through_the_cli(tmp_path, keyring_env, capsys):
    from faice.cli import main

    red_file = tmp_path / "exp.red.json"
    red_file.write_text(json.dumps(red()))
    code = main(["exec", str(red_file), "--non-interactive", "--keyring-service", "empty-service"])
    err = capsys.readouterr().err
    assert code == 1
    assert "5 variables could not be resolved (--non-interactive)" in err
    for name in ("ssh_host", "ssh_port", "ssh_user", "ssh_password", "dataset"):
        assert f"  {name}  (used at inputs.data.connector.access." in err
    assert "keyring service 'empty-service'" in err
