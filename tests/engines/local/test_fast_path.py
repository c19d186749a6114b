"""A repeated run of a known tool starts fast: no cwltool load, no paramiko import.

The speed itself is measured in bench/bench_engine.py; these tests pin the behaviour that
gives it (what is imported, what is remembered on disk) and that it never hides a problem.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from engine_helpers import sh_red

from faice.cwl import checked
from faice.cwl.tool import cli_problems

FAICE = [sys.executable, "-m", "faice"]


def run_faice(args: list[str], cache: Path, cwd: Path, *, importtime: bool = False) -> subprocess.CompletedProcess:
    env = dict(os.environ, FAICE_CACHE_DIR=str(cache))
    argv = [sys.executable, "-X", "importtime", "-m", "faice", *args] if importtime else [*FAICE, *args]
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def imported(stderr: str) -> set[str]:
    return {line.split("|")[-1].strip() for line in stderr.splitlines() if line.startswith("import time:")}


@pytest.mark.docker
def test_a_validated_tool_runs_without_cwltool_or_paramiko(test_image, tmp_path):
    red = sh_red(tmp_path / "one.red.json", 'echo "batch $0"', test_image, stdout="out.txt",
                 outputs={"log": {"type": "stdout"}})
    cache = tmp_path / "cache"
    first = run_faice(["validate", str(red)], cache, tmp_path, importtime=True)
    assert first.returncode == 0, first.stderr
    assert "cwltool" in imported(first.stderr), "an unseen tool must be checked by cwltool"
    markers = list((cache / "checked-tools").iterdir())
    assert len(markers) == 1 and len(markers[0].name) == 64 and markers[0].stat().st_size == 0

    second = run_faice(["exec", "--no-progress", "--disable-pull", str(red), "--outdir", "run"], cache, tmp_path,
                       importtime=True)
    assert second.returncode == 0, second.stderr
    modules = imported(second.stderr)
    assert not {m for m in modules if m.split(".")[0] in ("cwltool", "schema_salad")}
    assert "paramiko.transport" not in modules  # (the refused `import paramiko` itself is listed)
    assert "docker" in modules
    [record] = (tmp_path / "run" / "batches").glob("*/result.json")
    assert json.loads(record.read_text())["state"] == "succeeded"
    assert (tmp_path / "run" / "batches" / record.parent.name / "stdout.txt").read_text() == "batch 0\n"


def test_a_broken_tool_is_reported_every_time_and_never_remembered(tmp_path, monkeypatch):
    monkeypatch.setenv("FAICE_CACHE_DIR", str(tmp_path))
    broken = {"cwlVersion": "v1.0", "class": "CommandLineTool", "baseCommand": "prog",
              "inputs": {"x": {"type": "Fil", "inputBinding": {}}}, "outputs": {}}
    for _ in range(2):
        [(path, message)] = cli_problems(broken, "broken.red.yml")
        assert path == ("cli", "inputs", "x") and "Fil" in message
    assert not (tmp_path / "checked-tools").exists() or not any((tmp_path / "checked-tools").iterdir())


def test_the_record_depends_on_the_whole_tool_and_can_be_disabled(tmp_path, monkeypatch):
    monkeypatch.setenv("FAICE_CACHE_DIR", str(tmp_path))
    tool = {"cwlVersion": "v1.0", "class": "CommandLineTool", "baseCommand": "prog",
            "inputs": {"x": {"type": "int", "inputBinding": {}}}, "outputs": {}}
    assert cli_problems(tool) == []
    assert checked.is_known_good(tool)
    other = dict(tool, baseCommand="other")
    assert not checked.is_known_good(other)
    monkeypatch.setenv("FAICE_CACHE_DIR", "")
    assert checked.cache_dir() is None and not checked.is_known_good(tool)


def test_an_unwritable_cache_only_costs_time(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("FAICE_CACHE_DIR", str(blocker))
    tool = {"cwlVersion": "v1.0", "class": "CommandLineTool", "baseCommand": "prog",
            "inputs": {}, "outputs": {}}
    assert cli_problems(tool) == []
    assert not checked.is_known_good(tool)
