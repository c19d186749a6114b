"""The command line of a batch follows CWL v1.0 (as cwltool builds it), not upstream's order."""

from __future__ import annotations

import io
import json

import pytest

from faice.cwl.commandline import CommandBuilder, basename_for
from faice.cwl.outputs import collect
from faice.errors import ValidationError


def tool(inputs, base=("prog",), outputs=None):
    return {"cwlVersion": "v1.0", "class": "CommandLineTool", "baseCommand": list(base),
            "inputs": inputs, "outputs": outputs or {}}


CASES = [
    # (cli inputs, job inputs, expected argv after the base command)
    ({"x": {"type": "int?", "inputBinding": {"prefix": "-B"}}}, {"x": 1}, ["-B", "1"]),
    ({"n": {"type": "int", "inputBinding": {"prefix": "--n=", "separate": False}}}, {"n": 42}, ["--n=42"]),
    ({"f": {"type": "boolean?", "inputBinding": {"prefix": "--flag"}}}, {"f": True}, ["--flag"]),
    ({"f": {"type": "boolean?", "inputBinding": {"prefix": "--flag"}}}, {"f": False}, []),
    ({"a": {"type": "string[]", "inputBinding": {"prefix": "-i"}}}, {"a": ["a", "b"]}, ["-i", "a", "b"]),
    ({"a": {"type": "int[]", "inputBinding": {"itemSeparator": ","}}}, {"a": [1, 2, 3]}, ["1,2,3"]),
    ({"o": {"type": "string?", "inputBinding": {"prefix": "-o"}}}, {}, []),
    ({"v": {"type": "float", "inputBinding": {}}}, {"v": 1.0}, ["1.0"]),
    # CWL sorts every binding by (position, name); upstream put prefixed ones last.
    (
        {
            "late": {"type": "string", "inputBinding": {"position": 2}},
            "opt": {"type": "string", "inputBinding": {"prefix": "--opt", "position": 1}},
            "b_pos": {"type": "string", "inputBinding": {"position": 0}},
            "a_pos": {"type": "string", "inputBinding": {"position": 0}},
        },
        {"late": "L", "opt": "O", "b_pos": "B", "a_pos": "A"},
        ["A", "B", "--opt", "O", "L"],
    ),
    ({"s": {"type": "string", "inputBinding": {}}}, {"s": 'test ">&2'}, ['test ">&2']),
]


@pytest.mark.parametrize(("inputs", "job", "expected"), CASES)
def test_argv_follows_cwl(inputs, job, expected):
    assert CommandBuilder(tool(inputs)).build(job).argv == ["prog", *expected]


def test_file_inputs_land_under_cc_inputs_with_their_remote_name():
    cli = tool({
        "data": {"type": "File", "inputBinding": {"prefix": "--data"}},
        "more": {"type": "File[]", "inputBinding": {}},
        "plain": {"type": "File", "inputBinding": {"position": 9}},
    }, outputs={"out": {"type": "File", "outputBinding": {"glob": "$(inputs.data.nameroot).out"}}})
    ssh = {"command": "ssh", "access": {"host": "h", "filePath": "/srv/train.csv"}}
    command = CommandBuilder(cli).build({
        "data": {"class": "File", "connector": ssh},
        "more": [{"class": "File", "connector": {"command": "http", "access": {"url": "http://h/x/a.txt?sig=1"}}},
                 {"class": "File", "basename": "given.bin", "connector": ssh}],
        "plain": {"class": "File", "connector": {"command": "s3", "access": {}}},
    })
    assert command.argv == ["prog", "--data", "/cc/inputs/data/train.csv", "/cc/inputs/more/0/a.txt",
                            "/cc/inputs/more/1/given.bin", "/cc/inputs/plain/plain"]
    assert [s.key for s in command.staged] == ["data", "more:0", "more:1", "plain"]
    assert command.globs == {"out": "train.out"}  # input references resolved in globs
    assert basename_for("k", {"class": "Directory", "connector": {"access": {"dirPath": "/a/b/"}}}) == "b"


def test_missing_required_input_names_the_batch():
    with pytest.raises(ValidationError, match=r"batches\[3\].inputs: .*Missing required input parameter 'x'"):
        CommandBuilder(tool({"x": {"type": "int", "inputBinding": {}}})).build({}, label="batches[3].inputs")


def test_agrees_with_cwltool_running_the_tool(tmp_path):
    """Cross-check with cwltool itself: ``echo`` prints the argv cwltool built."""
    from cwltool.main import main as cwltool_main

    inputs = {k: v for case in CASES[:6] for k, v in case[0].items()}
    inputs.update(CASES[8][0])
    job = {"x": 1, "n": 42, "f": True, "a": [1, 2, 3], "late": "L", "opt": "O", "b_pos": "B", "a_pos": "A"}
    inputs["a"] = {"type": "int[]", "inputBinding": {"itemSeparator": ","}}
    cli = tool(inputs, base=("echo",), outputs={"out": {"type": "stdout"}})
    cli["stdout"] = "out.txt"
    (tmp_path / "tool.cwl").write_text(json.dumps(cli))
    (tmp_path / "job.json").write_text(json.dumps(job))
    code = cwltool_main(["--no-container", "--quiet", "--outdir", str(tmp_path / "o"), str(tmp_path / "tool.cwl"),
                         str(tmp_path / "job.json")], stdout=io.StringIO(), stderr=io.StringIO())
    assert code == 0
    printed = (tmp_path / "o" / "out.txt").read_text().split()
    assert CommandBuilder(cli).build(job).argv[1:] == printed


def test_outputs_are_collected_by_glob(tmp_path):
    (tmp_path / "model.h5").write_text("w")
    (tmp_path / "plots").mkdir()
    (tmp_path / "a.log").write_text("1")
    (tmp_path / "b.log").write_text("2")
    found = {o.key: o for o in collect(
        tmp_path,
        {"m": "*.h5", "p": "plots", "logs": "*.log", "none": "x.csv", "dir_as_file": "plots"},
        {"m": "File", "p": "Directory", "logs": "File", "none": "File?", "dir_as_file": "File"},
        {},
    )}
    assert found["m"].path == tmp_path / "model.h5" and found["m"].problem is None
    assert found["p"].path == tmp_path / "plots"
    assert "ambiguous" in found["logs"].problem
    assert found["none"].path is None and found["none"].problem is None
    assert "no file matches" in found["dir_as_file"].problem  # a directory is not a File
