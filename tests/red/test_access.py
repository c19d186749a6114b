"""`faice validate` checks every connector statically: the command names a connector that can
do what is asked, and `access` fits that connector's own JSON Schema — with file, line, column
and key path, once per place in the file, every problem at once, no variable values needed."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import textwrap
from pathlib import Path

from connector_plugins import environment_with, install_connector
from red_yaml import red_head

from faice.cli import main

HEAD = red_head("cat") + """\
  inputs:
    data: {type: File, inputBinding: {position: 0}}
    more: {type: "File?", inputBinding: {position: 1}}
    tree: {type: "Directory?", inputBinding: {position: 2}}
  outputs: {}
container: {engine: docker, settings: {image: {url: alpine:3.19}}}
outputs: {}
"""


def validate(tmp_path: Path, body: str, name: str = "r.red.yml") -> tuple[int, str, Path]:
    path = tmp_path / name
    path.write_text(body)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["validate", str(path)])
    return code, err.getvalue(), path


def data_red(command: str, access: str) -> str:
    """HEAD and the one input ``data``: a File that connector ``command`` fetches. ``access`` is
    what follows ``access:`` as written there: a flow mapping on that line, or block lines below."""
    return HEAD + f"inputs:\n  data:\n    class: File\n    connector:\n      command: {command}\n      access:{access}"


def line_of(path: Path, text: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def test_a_typo_in_an_access_key_is_found_at_its_line(tmp_path):
    code, err, path = validate(tmp_path, data_red("file", "\n        pat: /data/in.txt\n"))
    assert code == 1
    assert f"{path}:{line_of(path, 'pat:')}:9: inputs.data.connector.access.pat: unknown key 'pat' (allowed: path)" in err
    assert "inputs.data.connector.access: missing required key 'path'" in err


def test_unknown_keys_of_mixed_types_are_listed_not_a_crash(tmp_path):
    """YAML allows number keys beside string ones; sorting them together raised TypeError
    (found by the fuzz test)."""
    code, err, _ = validate(tmp_path, data_red("file", "\n        path: /data/in.txt\n        0: x\n        zz: y\n"))
    assert code == 1, err
    assert "unknown key 0, 'zz' (allowed: path)" in err
    assert "Traceback" not in err and "internal error" not in err


def test_an_unknown_connector_that_looks_like_a_typo_is_an_error_naming_the_known_ones(tmp_path):
    code, err, path = validate(tmp_path, data_red("fiel", " {path: /data/in.txt}\n"))
    assert code == 1
    line = line_of(path, "command: fiel")
    assert f"{path}:{line}:7: inputs.data.connector.command: unknown connector 'fiel'; did you mean 'file'?" in err
    assert "known: file, http" in err and "ssh" in err


def test_a_program_missing_here_is_only_a_warning(tmp_path):
    """The RED may be meant for a machine where that connector program is installed."""
    code, err, path = validate(tmp_path, data_red("acme-tape-archive-fetch", " {volume: 7}\n"))
    assert code == 0, err
    line = line_of(path, "acme-tape-archive-fetch")
    assert f"faice: warning: {path}:{line}:7: inputs.data.connector.command: connector 'acme-tape-archive-fetch'" in err
    assert "no program on this machine's PATH" in err


def test_a_program_on_path_is_an_external_connector_without_a_schema(tmp_path):
    code, err, _ = validate(tmp_path, data_red("cat", " {anything: [1, 2]}\n"))
    assert code == 0, err
    assert "warning" not in err


def test_a_number_where_a_string_belongs_is_found_without_showing_it(tmp_path):
    code, err, path = validate(tmp_path, data_red("ssh", "\n        host: login.example.org\n        auth:\n"
                                                         "          username: ada\n          password: 424242424242\n"
                                                         "        filePath: /data/in.txt\n"))
    assert code == 1
    line = line_of(path, "password:")
    assert f"{path}:{line}:11: inputs.data.connector.access.auth.password: expected string" in err
    assert "424242424242" not in err


def test_a_protected_key_is_named_as_written(tmp_path):
    access = " {host: h, port: 22, auth: {_username: ada, _password: 4242}, filePath: /x}\n"
    code, err, path = validate(tmp_path, data_red("ssh", access))
    assert code == 1
    assert f"{path}:{line_of(path, '_password')}:" in err
    assert "inputs.data.connector.access.auth._password: expected string" in err and "4242" not in err


def test_every_problem_is_reported_at_once(tmp_path):
    code, err, path = validate(tmp_path, HEAD + textwrap.dedent("""\
        inputs:
          data: {class: File, connector: {command: file, access: {pat: /a}}}
          more: {class: File, connector: {command: htpp, access: {url: "https://example.org/x"}}}
          tree: {class: Directory, connector: {command: file, mount: true, access: {path: /srv}}}
        """))
    assert code == 1
    assert "is not valid (4 problems)" in err, err
    assert "inputs.data.connector.access.pat: unknown key 'pat'" in err
    assert "inputs.more.connector.command: unknown connector 'htpp'; did you mean 'http'?" in err
    assert "inputs.tree.connector.command: connector 'file' cannot mount-dir" in err


def test_values_filled_later_are_not_judged(tmp_path):
    """{{variables}} and $(sweep.x) stand where integers, patterns or whole blocks belong."""
    code, err, _ = validate(tmp_path, HEAD + textwrap.dedent("""\
        inputs:
          data:
            class: File
            connector:
              command: ssh
              access:
                host: "{{host}}"
                port: "$(sweep.port)"
                auth: {_username: "{{user}}", _password: "{{password}}"}
                filePath: "/data/$(sweep.index).txt"
          more:
            class: File
            connector:
              command: http
              access: {url: "{{base_url}}/more.txt", method: GET}
          tree:
            class: Directory
            connector:
              command: s3
              access: {url: "$(sweep.bucket)", auth: {accessKeyId: "{{key_id}}", secretAccessKey: "{{secret}}"}}
        sweep:
          grid:
            port: [22, 2222]
            bucket: ["s3://bucket-one/x", "s3://bucket-two/y"]
        """))
    assert code == 0, err
    assert "warning" not in err


def test_a_sweep_template_is_checked_once_not_once_per_batch(tmp_path):
    sweep = "sweep:\n  grid:\n    n: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19]\n"
    code, err, path = validate(tmp_path, data_red("file", ' {path: "/data/$(sweep.n).txt", mode: fast}\n') + sweep)
    assert code == 1
    assert "(1 problem)" in err and err.count("unknown key 'mode'") == 1, err


def test_files_given_by_a_sweep_are_checked_where_they_are_written(tmp_path):
    code, err, path = validate(tmp_path, HEAD + textwrap.dedent("""\
        inputs: {}
        sweep:
          grid:
            data:
              - {class: File, connector: {command: file, access: {path: /a.txt}}}
              - {class: File, connector: {command: file, access: {paht: /b.txt}}}
        """))
    assert code == 1
    assert f"{path}:{line_of(path, 'paht')}:" in err
    assert "sweep.grid.data[1].connector.access.paht: unknown key 'paht' (allowed: path)" in err


def test_json_files_get_line_and_column_for_access_problems(tmp_path):
    data = {
        "redVersion": "9",
        "cli": {"cwlVersion": "v1.0", "class": "CommandLineTool", "baseCommand": "cat",
                "inputs": {"data": {"type": "File", "inputBinding": {"position": 0}}}, "outputs": {}},
        "container": {"engine": "docker", "settings": {"image": {"url": "alpine:3.19"}}},
        "inputs": {"data": {"class": "File", "connector": {"command": "http", "access": {"url": "ftp://x/y"}}}},
        "outputs": {},
    }
    code, err, path = validate(tmp_path, json.dumps(data, indent=2), "r.red.json")
    assert code == 1
    line = line_of(path, '"url": "ftp://x/y"')
    assert f"{path}:{line}:" in err and "inputs.data.connector.access.url: expected text matching" in err


PLUGIN = '''
from faice.connectors import Connector


class TapeConnector(Connector):
    names = ("tape",)
    access_schema = {"type": "object", "properties": {"volume": {"type": "integer"}},
                     "required": ["volume"], "additionalProperties": False}

    def receive_file(self, access, dest, progress):
        dest.write_text("tape")
'''


def test_an_installed_plugin_is_checked_against_its_own_schema(tmp_path):
    root = tmp_path / "plugin"
    root.mkdir()
    install_connector(root, "tape", PLUGIN, "TapeConnector")
    red = tmp_path / "tape.red.yml"
    red.write_text(data_red("tape", " {volume: seven}\n"))
    done = subprocess.run([sys.executable, "-m", "faice", "validate", str(red)], capture_output=True, text=True,
                          timeout=60, env=environment_with(root))
    assert done.returncode == 1, done.stderr
    assert f"{red}:{line_of(red, 'seven')}:16:" in done.stderr and "inputs.data.connector.access.volume: expected integer" in done.stderr
