"""A large RED file is checked fast or refused by a documented limit (issue 19): a 1 MB
file with a 100,000-element list took 40 s of ``faice validate`` (a 5,000-token baseCommand
minutes, inside cwltool); now ``FAICE_MAX_RED_VALUES`` (10,000 values) and 500 items per list
of ``cli`` end it in well under a second of CPU, with the file, line and key path."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "local" / "word-count.red.yml"
CPU_BUDGET_S = 1.0


def example() -> dict:
    from faice.red.load import load_mapping, to_plain

    return to_plain(load_mapping(str(EXAMPLE), "RED file").data)


def validate(path: Path, **env: str) -> tuple[subprocess.CompletedProcess, float]:
    """``faice validate`` in a child process, and the CPU seconds it used."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run([sys.executable, "-m", "faice", "validate", str(path)], capture_output=True, text=True,
                          timeout=120, cwd=EXAMPLE.parent, env={**os.environ, **env})
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return done, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def write_yaml(path: Path, data: dict) -> Path:
    from ruamel.yaml import YAML

    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = False
    with open(path, "w") as handle:
        yaml.dump(data, handle)
    return path


@pytest.mark.parametrize("style", ["yaml", "json"])
def test_a_megabyte_file_with_a_100000_element_list_is_refused_fast(tmp_path, style):
    red = example()
    red["sweep"]["grid"]["min_length"] = list(range(100_000))
    path = tmp_path / f"big.red.{style}"
    if style == "json":
        path.write_text(json.dumps(red, indent=1))
    else:
        write_yaml(path, red)
    assert path.stat().st_size > 1_000_000
    done, cpu = validate(path)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and "internal error" not in done.stderr
    assert f"{path}:" in done.stderr and "more than 10,000 values" in done.stderr
    assert "FAICE_MAX_RED_VALUES" in done.stderr and "sweep.grid.min_length[" in done.stderr
    assert cpu <= CPU_BUDGET_S, f"{cpu:.2f} s of CPU"


def test_the_limit_is_a_setting(tmp_path):
    red = example()
    red["cli"]["inputs"]["numbers"] = {"type": "int[]", "inputBinding": {"position": 2}}
    red["inputs"]["numbers"] = list(range(12_000))
    path = write_yaml(tmp_path / "numbers.red.yml", red)
    refused, _ = validate(path)
    assert refused.returncode == 1 and "more than 10,000 values" in refused.stderr
    accepted, _ = validate(path, FAICE_MAX_RED_VALUES="20000")
    assert accepted.returncode == 0, accepted.stderr


def test_a_long_list_in_the_tool_never_reaches_cwltool(tmp_path):
    red = example()
    red["cli"]["baseCommand"] = ["echo"] * 5_000
    path = write_yaml(tmp_path / "tokens.red.yml", red)
    done, cpu = validate(path)
    assert done.returncode == 1
    assert "cli.baseCommand: a list of 5,000 items; a tool description holds at most 500 per list" in done.stderr
    assert cpu <= CPU_BUDGET_S, f"{cpu:.2f} s of CPU"
