"""``faice exec --dry-run`` is one implementation for every engine (faice.engines.base.dry_run):
each engine only says what it would do (``Engine.plan``) and how that reads as text
(``Engine.render``, JSON without one); nothing starts, nothing is written, no server or
Slurm is asked."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from faice.cli import main
from faice.engines import ENGINE_MODULES, engine

EXECUTION: dict[str, dict[str, Any]] = {
    "ccfaice": {"engine": "ccfaice", "settings": {}},
    "slurm": {"engine": "slurm", "settings": {"partition": "debug", "workers": 2}},
    # port 1: nothing listens, so a dry run that asked the agency would fail
    "ccagency": {"engine": "ccagency", "settings": {"access": {"url": "http://127.0.0.1:1",
                                                              "auth": {"username": "u", "password": "p"}}}},
}


def red_file(tmp_path: Path, name: str) -> Path:
    red = {
        "redVersion": "9",
        "cli": {"cwlVersion": "v1.0", "class": "CommandLineTool", "baseCommand": "echo",
                "inputs": {"word": {"type": "string", "inputBinding": {"position": 0}}}, "outputs": {}},
        "sweep": {"grid": {"n": [1, 2, 3]}},
        "inputs": {"word": "n=$(sweep.n)"},
        "outputs": {},
        "container": {"engine": "docker", "settings": {"image": {"url": "faice-test/base:bookworm"}, "ram": 256}},
        "execution": EXECUTION[name],
    }
    path = tmp_path / f"{name}.red.yml"
    path.write_text(yaml.safe_dump(red))
    return path


def test_every_engine_declares_its_plan_for_the_one_dry_run():
    assert set(EXECUTION) == set(ENGINE_MODULES)  # a new engine joins this file
    for name in ENGINE_MODULES:
        assert callable(engine(name).plan), name


@pytest.mark.parametrize("name", sorted(EXECUTION))
def test_dry_run_json_plans_three_batches_and_starts_nothing(name, tmp_path, capsys):
    outdir = tmp_path / "run"
    assert main(["exec", str(red_file(tmp_path, name)), "--dry-run", "--json", "--outdir", str(outdir)]) == 0
    plan = json.loads(capsys.readouterr().out)
    batches = plan["batches"]
    assert (batches if isinstance(batches, int) else len(batches)) == 3, plan
    assert not outdir.exists()


def test_packed_slurm_plan_says_how_many_batches_a_worker_runs(tmp_path, capsys):
    red = red_file(tmp_path, "slurm")
    assert main(["exec", str(red), "--dry-run", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert (plan["workers"], plan["batchesPerWorker"]) == (2, 1)
    assert main(["exec", str(red), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("Slurm plan (nothing submitted):")
    assert "2 workers, each running up to 1 batch(es) at once" in text and text.count("  task ") == 3
