"""Every shipped example is a valid RED file, and the Machine Learning Guide's pieces agree.

These tests need no services: they run the real ``faice`` CLI on the files users copy.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers_examples import EXAMPLES, explain, faice, load_yaml, red_files

ML_GUIDE = EXAMPLES / "ml-guide"
ML_GUIDE_REDS = ("local.red.yml", "local-gpu.red.yml", "agency.red.yml")


def test_examples_exist():
    names = {path.relative_to(EXAMPLES).as_posix() for path in red_files()}
    assert {f"ml-guide/{name}" for name in ML_GUIDE_REDS} <= names


@pytest.mark.parametrize("red_file", red_files(), ids=lambda p: p.relative_to(EXAMPLES).as_posix())
def test_example_validates(red_file):
    result = faice("validate", red_file.name, cwd=red_file.parent)
    assert result.returncode == 0, explain(result)


@pytest.mark.parametrize("name", ML_GUIDE_REDS)
def test_ml_guide_red_embeds_the_cwl_tool(name):
    """The guide's RED files embed exactly the tool described in cnn-training.cwl.yml."""
    tool = load_yaml(ML_GUIDE / "cnn-training.cwl.yml")
    red = load_yaml(ML_GUIDE / name)
    assert red["cli"] == tool


def test_ml_guide_cwl_converts_to_json():
    """The guide's step: faice convert format --format=json cnn-training.cwl.yml > cnn-training.cwl.json."""
    result = faice("convert", "format", "--format=json", "cnn-training.cwl.yml", cwd=ML_GUIDE)
    assert result.returncode == 0, explain(result)
    assert json.loads(result.stdout) == load_yaml(ML_GUIDE / "cnn-training.cwl.yml")


def test_ml_guide_gpu_variant_asks_one_nvidia_gpu_and_cpu_variant_none():
    gpu = load_yaml(ML_GUIDE / "local-gpu.red.yml")["container"]["settings"]
    cpu = load_yaml(ML_GUIDE / "local.red.yml")["container"]["settings"]
    assert gpu["gpus"] == {"vendor": "nvidia", "count": 1}
    assert "gpus" not in cpu  # what the tests (and CPU hosts) run must not need a GPU


def test_ml_guide_dry_run_plans_one_batch_per_learning_rate():
    """--dry-run needs no variable values and shows both sweep batches with their commands."""
    result = faice("exec", "local.red.yml", "--dry-run", "--non-interactive", cwd=ML_GUIDE)
    assert result.returncode == 0, explain(result)
    out = result.stdout
    assert "0.0001" in out and "0.001" in out
    assert "training_0_lr0.0001.log" in out and "training_1_lr0.001.log" in out
    assert "cnn-training.py" in out


def test_ml_guide_generator_writes_valid_red8_with_explicit_batches(tmp_path):
    """generate-red.py (the upstream way) produces a RED 8 file faice accepts, one batch per rate."""
    red_path = tmp_path / "red.json"
    generated = subprocess.run(
        [sys.executable, str(ML_GUIDE / "generate-red.py"), "--host", "data.example.org", "--port", "2200",
         "--learning-rates", "0.01", "0.1", "0.5"],
        capture_output=True, text=True, timeout=60, check=True,
    )
    red_path.write_text(generated.stdout)
    red = json.loads(generated.stdout)
    assert red["redVersion"] == "8"
    assert [b["inputs"]["learning_rate"] for b in red["batches"]] == [0.01, 0.1, 0.5]
    access = red["batches"][2]["outputs"]["weights_file"]["connector"]["access"]
    assert access["port"] == 2200 and access["filePath"].endswith("weights_lr0.5.h5")
    assert access["auth"] == {"username": "{{ssh_username}}", "password": "{{ssh_password}}"}
    assert red["cli"] == load_yaml(ML_GUIDE / "cnn-training.cwl.yml")

    result = faice("validate", str(red_path))
    assert result.returncode == 0, explain(result)
