"""``faice schema list|show|validate`` and the schema files themselves."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator
from ruamel.yaml import YAML

from faice.cli import main
from faice.red.load import load_mapping, to_plain
from faice.red.schemas import schema_names, schema_problems

DATA = Path(__file__).resolve().parents[1] / "data" / "red"
ROOT = Path(__file__).resolve().parents[2]
UPSTREAM_NAMES = ["red", "red-engine-container-docker", "red-engine-execution-ccfaice", "red-engine-execution-ccagency"]
FAICE_NAMES = ["red-8", "red-9", "red-engine-execution-slurm", "faice-sweep"]
UPSTREAM_RED9 = ["minimal.json", "minimal.red", "failed.json", "stdout.json", "stderr.json", "multi_batch.json",
                 "input_output.json", "grepwrap.red.yml"]


def test_list_names_upstream_and_faice_schemas(capsys):
    assert main(["schema", "list", "--format", "json"]) == 0
    names = json.loads(capsys.readouterr().out)["schemas"]
    assert set(UPSTREAM_NAMES + FAICE_NAMES) <= set(names)


def test_list_default_format_is_yaml(capsys):
    assert main(["schema", "list"]) == 0
    assert YAML(typ="safe").load(capsys.readouterr().out)["schemas"][:4] == UPSTREAM_NAMES


@pytest.mark.parametrize("name", schema_names())
def test_every_schema_is_a_valid_2020_12_schema_with_an_id(name, capsys):
    assert main(["schema", "show", name, "--format", "json"]) == 0
    schema = json.loads(capsys.readouterr().out)
    Draft202012Validator.check_schema(schema)
    assert schema["$id"].endswith(f"/{name}.json")


def test_shown_red_schema_works_on_its_own(capsys):
    """``show`` bundles the referenced schemas, so an external validator needs nothing else."""
    assert main(["schema", "show", "red", "--format", "json"]) == 0
    validator = Draft202012Validator(json.loads(capsys.readouterr().out))
    good = to_plain(load_mapping(str(DATA / "valid" / "sweep-local.red.yml")).data)
    assert list(validator.iter_errors(good)) == []
    good["container"]["settings"]["ram"] = 1
    assert [list(e.absolute_path) for e in validator.iter_errors(good)] == [["container", "settings", "ram"]]


def test_show_unknown_schema(capsys):
    assert main(["schema", "show", "red-7"]) == 1
    assert 'Schema "red-7" not found. Use "faice schema list" for available schemas.' in capsys.readouterr().err


@pytest.mark.parametrize("path", sorted((DATA / "valid").iterdir()), ids=lambda p: p.name)
def test_valid_corpus_complies_with_red(path):
    assert schema_problems("red", to_plain(load_mapping(str(path)).data)) == []


@pytest.mark.parametrize("name", UPSTREAM_RED9)
def test_upstream_files_comply_with_plain_red_9(name, capsys):
    assert main(["schema", "validate", "red-9", str(DATA / "valid" / name)]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_ml_guide_complies_with_red_8_not_red_9(capsys):
    path = str(DATA / "valid" / "ml-guide.red8.json")
    assert main(["schema", "validate", "red-8", path]) == 0
    assert main(["schema", "validate", "red-9", path]) == 1
    err = capsys.readouterr().err
    assert "key in red file: redVersion" in err
    assert "key in red file: execution/settings/retryIfFailed" in err


def test_faice_extensions_are_not_plain_red_9(capsys):
    assert main(["schema", "validate", "red-9", str(DATA / "valid" / "sweep-local.red.yml")]) == 1
    err = capsys.readouterr().err
    assert "key in red file: sweep" in err
    assert "key in red file: execution/engine" in err


def test_validate_lists_every_schema_error_upstream_style(tmp_path, capsys):
    path = tmp_path / "bad.red.yml"
    path.write_text(
        "redVersion: '9'\n"
        "cli: {cwlVersion: v1.0, class: CommandLineTool, inputs: {}, outputs: {}, arguments: []}\n"
        "batches:\n"
        "  - inputs: {a: null}\n"
        "container: {engine: docker, settings: {image: {}}}\n"
    )
    assert main(["schema", "validate", "red", str(path)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f'[RedValidationError]\nFile "{path}" does not comply with schema "red":\n')
    for key in ("cli/arguments", "batches/0/inputs/a", "container/settings/image"):
        assert f"\tkey in red file: {key} (line " in captured.err
    assert captured.err.count("\treason: ") == 3
    assert "\treason: 'url' is a required property" in captured.err


def test_validate_against_an_engine_schema(tmp_path, capsys):
    path = tmp_path / "docker.yml"
    path.write_text("image: {url: x}\ngpus: {vendor: amd, count: 1}\n")
    assert main(["schema", "validate", "red-engine-container-docker", str(path)]) == 1
    assert "key in red file: gpus/vendor" in capsys.readouterr().err
    path.write_text("image: {url: x}\nram: 1024\ngpus: {vendor: nvidia, devices: [{vramMin: 2048}]}\n")
    assert main(["schema", "validate", "red-engine-container-docker", str(path)]) == 0


def test_validate_unknown_schema_and_missing_file(tmp_path, capsys):
    assert main(["schema", "validate", "nope", str(DATA / "valid" / "minimal.json")]) == 1
    assert 'Schema "nope" not found' in capsys.readouterr().err
    assert main(["schema", "validate", "red", str(tmp_path / "missing.yml")]) == 1
    assert "no such file" in capsys.readouterr().err


def test_schema_validate_through_real_cli():
    result = subprocess.run(
        [sys.executable, "-m", "faice", "schema", "validate", "red", "tests/data/red/invalid/ram-too-low.yml"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 1
    assert "key in red file: container/settings/ram (line " in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("sweep", "path", "fragment"),
    [
        ({"grid": {"lr": []}}, ["grid", "lr"], "non-empty list"),
        ({"zip": {"a b": [1]}}, ["zip", "a b"], "not a valid name"),
        ({"random": {"samples": 3, "parameters": {"x": {"uniform": [1]}}}}, ["random", "parameters", "x", "uniform"], "at least 2"),
        ({"random": {"samples": 3, "parameters": {"x": {"loguniform": [0, 1]}}}}, ["random", "parameters", "x", "loguniform", 0], "> 0"),
        ({"random": {"samples": 3, "parameters": {"x": {"randint": [1, 2.5]}}}}, ["random", "parameters", "x", "randint", 1], "integer"),
        ({"random": {"samples": 3, "parameters": {"x": {"choice": [1], "uniform": [0, 1]}}}}, ["random", "parameters", "x"], "exactly one of"),
        ({"random": {"parameters": {"x": {"choice": [1]}}}}, ["random"], "'samples' is a required property"),
        ({}, [], "at least one key"),
    ],
)
def test_sweep_schema(sweep, path, fragment):
    found = schema_problems("faice-sweep", sweep)
    assert any(list(p) == path and fragment in m for p, m in found), found
