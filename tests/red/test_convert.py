"""``faice convert format|cwl|sweep|batches``: upstream's expectations, and output that
upstream cc-faice 9.3.0 accepts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from faice.cli import main
from faice.red.load import parse_text

try:
    from upstream import upstream_validate_red
except ImportError:  # tests/red became a package
    from red.upstream import upstream_validate_red

DATA = Path(__file__).resolve().parent.parent / "data" / "sweeps"
UPSTREAM = DATA / "upstream"
LR_SWEEP = DATA / "lr-sweep.red.yml"
FAICE = Path(sys.executable).parent / "faice"


def faice(*args: str, cwd: str | os.PathLike | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(FAICE), *args], capture_output=True, text=True, cwd=cwd, timeout=120)


# ---------------------------------------------------------------- format and cwl


def test_format_json_to_yaml_is_exactly_upstreams_sorted_yaml(capsys):
    assert main(["convert", "format", str(UPSTREAM / "minimal.json")]) == 0
    assert capsys.readouterr().out == (UPSTREAM / "minimal.red").read_text()


def test_format_yaml_cwl_to_json_like_the_guide(tmp_path):
    """The guide: faice convert format --format=json cnn-training.cwl.yml > cnn-training.cwl.json"""
    done = faice("convert", "format", "--format=json", str(UPSTREAM / "cnn-training.cwl.yml"))
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    data = json.loads(done.stdout)
    assert data["baseCommand"] == ["python3", "/opt/train.py"]
    assert data["inputs"]["batch_size"] == {"type": "int?", "inputBinding": {"prefix": "--batch-size"}}
    assert done.stdout.startswith('{\n    "cwlVersion"')  # upstream's 4-space indentation


def test_format_reports_a_missing_file_and_bad_yaml_clearly(tmp_path, capsys):
    assert main(["convert", "format", str(tmp_path / "nope.yml")]) == 1
    assert "nope.yml: no such file" in capsys.readouterr().err
    bad = tmp_path / "bad.yml"
    bad.write_text("a: [1, 2\nb: 3\n")
    assert main(["convert", "format", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "bad.yml:" in err and "invalid YAML" in err and "Traceback" not in err


def test_cwl_prints_the_cli_section_exactly_like_upstream(capsys):
    assert main(["convert", "cwl", str(UPSTREAM / "minimal.red")]) == 0
    assert capsys.readouterr().out == (UPSTREAM / "minimal.cwl").read_text()


def test_cwl_without_cli_or_file_names_the_file(tmp_path):
    no_cli = tmp_path / "no-cli.red.yml"
    no_cli.write_text("redVersion: '9'\ninputs: {}\n")
    done = faice("convert", "cwl", str(no_cli))
    assert done.returncode == 1
    assert f"{no_cli} does not contain a cli section" in done.stderr
    missing = faice("convert", "cwl", str(tmp_path / "missing.red"))
    assert missing.returncode == 1 and "missing.red: no such file" in missing.stderr
    assert "Traceback" not in done.stderr + missing.stderr


# ---------------------------------------------------------------- sweep and batches


def test_sweep_prints_plain_red_with_explicit_batches(capsys):
    assert main(["convert", "sweep", str(LR_SWEEP), "--format", "json"]) == 0
    converted = json.loads(capsys.readouterr().out)
    assert "sweep" not in converted and "inputs" not in converted
    assert len(converted["batches"]) == 8
    first = converted["batches"][0]
    assert first["inputs"] == {"learning_rate": 0.0001, "batch_size": 32, "seed": 1, "log_file_name": "training_0_a.log"}
    access = first["outputs"]["weights"]["connector"]["access"]
    assert access["filePath"] == "/results/weights_0_lr0.0001.h5"
    assert access["auth"]["password"] == "{{ssh_password}}"  # conversions never fill secrets


def test_sweep_of_an_invalid_sweep_fails_with_the_key_path(tmp_path, capsys):
    bad = tmp_path / "bad.red.yml"
    bad.write_text(LR_SWEEP.read_text().replace("tag: [a, b]", "tag: [a, b, c]"))
    assert main(["convert", "sweep", str(bad)]) == 1
    err = capsys.readouterr().err
    assert f"{bad}:29" in err and "sweep.zip.tag" in err and "seed has 2 values, tag has 3" in err
    assert "Traceback" not in err


def test_batches_writes_one_red_file_per_batch(tmp_path, capsys):
    outdir = tmp_path / "out"
    assert main(["convert", "batches", str(LR_SWEEP), "--outdir", str(outdir), "--prefix", "lr_"]) == 0
    assert capsys.readouterr().out == ""
    names = sorted(os.listdir(outdir))
    assert names == [f"lr_batch_{i}.yml" for i in range(8)]
    documents = [parse_text(n, (outdir / n).read_text()).data for n in (f"lr_batch_{i}.yml" for i in range(8))]
    assert [d["inputs"]["log_file_name"] for d in documents] == [f"training_{i}_{'ab'[i % 2]}.log" for i in range(8)]
    for document in documents:
        assert set(document) == {"redVersion", "cli", "inputs", "outputs", "container", "execution"}


def test_batches_of_upstream_multi_batch_json_drops_empty_outputs(tmp_path):
    done = faice("convert", "batches", str(UPSTREAM / "multi_batch.json"), "--format", "json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    documents = [json.loads((tmp_path / f"faice_batch_{i}.json").read_text()) for i in range(3)]
    assert [d["inputs"]["some_string"] for d in documents] == ["test_0", "test_1", "test_2"]
    assert all("outputs" not in d and "batches" not in d for d in documents)


def test_batches_of_a_single_batch_file_writes_one_file(tmp_path):
    assert main(["convert", "batches", str(UPSTREAM / "minimal.json"), "--outdir", str(tmp_path)]) == 0
    assert os.listdir(tmp_path) == ["faice_batch_0.yml"]
    assert (tmp_path / "faice_batch_0.yml").read_text() == (UPSTREAM / "minimal.red").read_text()


def test_batches_refuses_to_overwrite_and_writes_nothing(tmp_path, capsys):
    (tmp_path / "faice_batch_3.yml").write_text("mine\n")
    (tmp_path / "faice_batch_5.yml").write_text("mine too\n")
    assert main(["convert", "batches", str(LR_SWEEP), "--outdir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "2 files already exist" in err
    assert str(tmp_path / "faice_batch_3.yml") in err and str(tmp_path / "faice_batch_5.yml") in err
    assert sorted(os.listdir(tmp_path)) == ["faice_batch_3.yml", "faice_batch_5.yml"]
    assert (tmp_path / "faice_batch_3.yml").read_text() == "mine\n"


def test_batch_files_with_literal_secrets_are_private(tmp_path):
    red = json.loads((UPSTREAM / "minimal.json").read_text())
    red["execution"]["settings"]["access"]["auth"]["password"] = "literal-pw"
    source = tmp_path / "literal.json"
    source.write_text(json.dumps(red))
    assert main(["convert", "batches", str(source), "--outdir", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "faice_batch_0.yml").stat().st_mode & 0o077 == 0
    assert main(["convert", "batches", str(UPSTREAM / "minimal.json"), "--outdir", str(tmp_path / "p")]) == 0
    assert (tmp_path / "p" / "faice_batch_0.yml").stat().st_mode & 0o044 == 0o044


# ---------------------------------------------------------------- upstream compatibility


@pytest.mark.upstream
def test_upstream_cc_faice_accepts_converted_sweeps_and_batches(tmp_path):
    """What faice writes for upstream tools passes upstream's own `faice schema validate red`;
    the raw sweep file does not (so the check is not vacuous)."""
    raw = upstream_validate_red(LR_SWEEP)
    assert raw.returncode != 0
    swept = faice("convert", "sweep", str(LR_SWEEP), "--format", "json")
    assert swept.returncode == 0, swept.stderr
    (tmp_path / "swept.json").write_text(swept.stdout)
    accepted = upstream_validate_red(tmp_path / "swept.json")
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    outdir = tmp_path / "batches"
    assert main(["convert", "batches", str(LR_SWEEP), "--outdir", str(outdir)]) == 0
    for name in sorted(os.listdir(outdir)):
        done = upstream_validate_red(outdir / name)
        assert done.returncode == 0, f"{name}: {done.stdout}{done.stderr}"
