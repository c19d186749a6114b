"""One RED file, every engine, the same records (Metaflow's test/core, Snakemake's shared
executor tests): a 6-batch metrics sweep with an http input from the test nginx and http PUT
outputs runs on the local engine, Slurm per task, packed Slurm and a real ``faice agency
serve``, each with ``--wait --outdir``. Every engine must give the same batch states and
failure classes and the same objective values, read by ``faice results`` from its run
directory, and deliver its 6 outputs.

A new engine or runtime joins by adding one entry to :data:`ENGINES` (its name, what it needs
and how its RED file's ``execution`` section and ``faice exec`` flags look).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import agency_fixtures  # tests/support: the real agency server tests/agency/ uses
import pytest
from agency_helpers import faice

pytestmark = [pytest.mark.docker]

VALUES = [1, 2, 3, 4, 5, 6]
SCRIPT = 'n=$(wc -w < "$0"); echo "score=$(( $(sweep.lr) * 10 ))"; echo "$(sweep.lr) $n" > result.txt'


@dataclass(frozen=True)
class EngineCase:
    """How one engine runs the shared RED file: the fixtures it needs and, given them, its
    ``execution`` section and extra ``faice exec`` arguments."""

    name: str
    needs: tuple[str, ...]
    execution: Callable[[dict[str, Any], Path], tuple[dict[str, Any], list[str]]]


def _local(_: dict[str, Any], __: Path) -> tuple[dict[str, Any], list[str]]:
    return {"engine": "ccfaice", "settings": {}}, []


def _slurm(found: dict[str, Any], _: Path) -> tuple[dict[str, Any], list[str]]:
    return {"engine": "slurm", "settings": {"partition": found["slurm"].partition}}, []


def _slurm_packed(found: dict[str, Any], _: Path) -> tuple[dict[str, Any], list[str]]:
    return {"engine": "slurm", "settings": {"partition": found["slurm"].partition, "workers": 2,
                                            "pollInterval": 1}}, []


def _agency(found: dict[str, Any], tmp_path: Path) -> tuple[dict[str, Any], list[str]]:
    server = found["agency_server"]
    variables = tmp_path / "vars.yml"
    variables.write_text(f"agency_password: {server.users['alice']}\n")
    access = {"url": server.url, "auth": {"username": server.name("alice"), "password": "{{agency_password}}"}}
    return {"engine": "ccagency", "settings": {"access": access}}, ["--variables", str(variables)]


ENGINES = [
    EngineCase("local", (), _local),
    EngineCase("slurm", ("slurm",), _slurm),
    EngineCase("slurm-packed", ("slurm",), _slurm_packed),
    EngineCase("agency", ("agency_server",), _agency),
]


@pytest.fixture(scope="module")
def agency_server(tmp_path_factory, test_image):
    make, started = agency_fixtures._factory(tmp_path_factory.mktemp("behaviour-agency"))
    yield make("--parallel", "3")
    agency_fixtures._stop_all(started)


def _red(http_server, image: str, prefix: str, execution: dict[str, Any]) -> dict[str, Any]:
    put = {"url": f"{http_server.url}/{prefix}/result-$(sweep.lr).txt", "method": "PUT",
           "auth": {"username": http_server.user, "password": http_server.password}}
    return {
        "redVersion": "9",
        "cli": {"cwlVersion": "v1.0", "class": "CommandLineTool", "baseCommand": ["sh", "-c"],
                "inputs": {"script": {"type": "string", "inputBinding": {"position": 0}},
                           "words": {"type": "File", "inputBinding": {"position": 1}}},
                "outputs": {"result": {"type": "File", "outputBinding": {"glob": "result.txt"}}}},
        "sweep": {"grid": {"lr": VALUES}},
        "inputs": {"script": SCRIPT,
                   "words": {"class": "File", "connector": {
                       "command": "http", "access": {"url": f"{http_server.url}/faice-examples/words.txt"}}}},
        "outputs": {"result": {"class": "File", "connector": {"command": "http", "access": put}}},
        "metrics": {"objective": {"name": "score", "goal": "max"}, "sources": [{"stdout": True}]},
        "container": {"engine": "docker", "settings": {"image": {"url": image}, "ram": 256}},
        "execution": execution,
    }


@pytest.mark.parametrize("case", ENGINES, ids=lambda case: case.name)
def test_the_same_sweep_gives_the_same_records_on_every_engine(case, request, http_server, test_image, tmp_path):
    found = {name: request.getfixturevalue(name) for name in case.needs}
    execution, extra = case.execution(found, tmp_path)
    prefix = f"behaviour/{case.name}-{uuid.uuid4().hex[:8]}"
    red_file = tmp_path / "sweep.red.json"
    red_file.write_text(json.dumps(_red(http_server, test_image, prefix, execution)))
    outdir = tmp_path / "run"
    result = faice("exec", str(red_file), "--outdir", str(outdir), "--wait", "--no-progress", *extra, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]

    ranked = faice("results", str(outdir), "--format", "json")
    assert ranked.returncode == 0, ranked.stderr
    rows = json.loads(ranked.stdout)
    assert [(row["state"], row["failure"]) for row in rows] == [("succeeded", None)] * len(VALUES)
    assert [row["objective"] for row in rows] == [10 * v for v in sorted(VALUES, reverse=True)]
    assert rows[0]["best"] and sum(bool(row["best"]) for row in rows) == 1

    run = json.loads((outdir / "run.json").read_text())
    assert run["state"] == "succeeded" and run["counts"] == {"succeeded": len(VALUES)}
    for entry in run["batches"]:
        stdout = outdir / "batches" / entry["id"] / "stdout.txt"
        assert stdout.read_text().startswith("score="), stdout  # faice logs reads the same files

    words = len((http_server.root / "faice-examples" / "words.txt").read_text().split())
    delivered = {path.name: path.read_text() for path in (http_server.root / prefix).iterdir()}
    assert delivered == {f"result-{v}.txt": f"{v} {words}\n" for v in VALUES}
