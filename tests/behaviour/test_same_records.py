"""One RED file, every engine and every runtime, the same records (Metaflow's test/core,
Snakemake's shared executor tests): a 6-batch metrics sweep with an http input from the test
nginx and http PUT outputs runs on the local engine, Slurm per task, packed Slurm and a real
``faice agency serve``, each with ``--wait --outdir``; and on the local engine in Docker,
Podman and Charliecloud (the sweep a user moves from a workstation to a cluster), Charliecloud
also under Slurm. Every case must give the same batch states and failure classes, the same
objective values (read by ``faice results`` from its run directory), the same stdout, and
deliver the same 6 outputs; a failing sweep fails alike (class, exit code, stdout, stderr)
on every runtime.

On the local engine every runtime pulls the test image from the loopback registry, with
credentials, as on a cluster; the other Docker cases run Docker's local copy of it. A new
engine joins by adding one entry to :data:`ENGINES` (its name, what it needs and how its RED
file's ``execution`` section and ``faice exec`` flags look), a new runtime one entry to
:data:`RUNTIMES`.
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from agency_fixtures import _factory, _stop_all
from runtime_fixtures import charliecloud, podman, registry  # noqa: F401  (fixtures)
from runtime_helpers import faice, records

pytestmark = [pytest.mark.docker]

VALUES = [1, 2, 3, 4, 5, 6]
SCRIPT = 'n=$(wc -w < "$0"); echo "score=$(( $(sweep.lr) * 10 ))"; echo "$(sweep.lr) $n" > result.txt'
FAILING = 'echo "to stderr" >&2; echo "out $(sweep.lr)"; exit $(( $(sweep.lr) + 2 ))'


@dataclass(frozen=True)
class EngineCase:
    """How one engine runs the shared RED file: the fixtures it needs and, given them, its
    ``execution`` section and extra ``faice exec`` arguments; ``runtime`` is the RED file's
    ``container.engine``."""

    name: str
    needs: tuple[str, ...]
    execution: Callable[[dict[str, Any], Path], tuple[dict[str, Any], list[str]]]
    runtime: str = "docker"
    registry: bool = False  # the image from the loopback registry (else Docker's local test image)

    def __str__(self) -> str:
        return f"{self.name}-{self.runtime}"


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


LOCAL = EngineCase("local", (), _local)
SLURM = EngineCase("slurm", ("slurm",), _slurm)
ENGINES = [LOCAL, SLURM, EngineCase("slurm-packed", ("slurm",), _slurm_packed),
           EngineCase("agency", ("agency_server",), _agency)]
RUNTIMES = ("docker", "podman", "charliecloud")
ON_EVERY_RUNTIME = [replace(LOCAL, runtime=runtime, registry=True) for runtime in RUNTIMES]
CASES = [*ON_EVERY_RUNTIME, *ENGINES[1:], replace(SLURM, runtime="charliecloud", registry=True)]


@pytest.fixture(scope="module")
def agency_server(tmp_path_factory, test_image):
    make, started = _factory(tmp_path_factory.mktemp("behaviour-agency"))
    yield make("--parallel", "3")
    _stop_all(started)


@pytest.fixture(scope="module")
def image_cache(tmp_path_factory) -> Path:
    """One image cache for the module's Charliecloud runs (the image converted once)."""
    return tmp_path_factory.mktemp("behaviour-images")


WORDS = "pear apple fig apple\n"


@pytest.fixture(scope="module", autouse=True)
def _served_words(http_server):
    """The sweep's http input, served by the test nginx (made here: no test may depend on
    what an earlier test or the demo left on the server)."""
    folder = http_server.root / "behaviour"
    folder.mkdir(exist_ok=True)
    (folder / "words.txt").write_text(WORDS)
    shutil.chown(folder, "www-data", "www-data")  # nginx creates the PUT prefixes below it


def _container(case: EngineCase, request: pytest.FixtureRequest) -> dict[str, Any]:
    """The local test image (Docker), or that image from the registry, with credentials."""
    if case.runtime != "docker":
        request.getfixturevalue(case.runtime)
    if not case.registry:
        image: dict[str, Any] = {"url": request.getfixturevalue("test_image")}
    else:
        found = request.getfixturevalue("registry")
        image = {"url": found.image, "auth": {"username": found.user, "password": found.password}}
    return {"engine": case.runtime, "settings": {"image": image, "ram": 256}}


def _red(http_server, container: dict[str, Any], prefix: str, execution: dict[str, Any],
         script: str = SCRIPT) -> dict[str, Any]:
    put = {"url": f"{http_server.url}/{prefix}/result-$(sweep.lr).txt", "method": "PUT",
           "auth": {"username": http_server.user, "password": http_server.password}}
    return {
        "redVersion": "9",
        "cli": {"cwlVersion": "v1.0", "class": "CommandLineTool", "baseCommand": ["sh", "-c"],
                "inputs": {"script": {"type": "string", "inputBinding": {"position": 0}},
                           "words": {"type": "File", "inputBinding": {"position": 1}}},
                "outputs": {"result": {"type": "File", "outputBinding": {"glob": "result.txt"}}}},
        "sweep": {"grid": {"lr": VALUES}},
        "inputs": {"script": script,
                   "words": {"class": "File", "connector": {
                       "command": "http", "access": {"url": f"{http_server.url}/behaviour/words.txt"}}}},
        "outputs": {"result": {"class": "File", "connector": {"command": "http", "access": put}}},
        "metrics": {"objective": {"name": "score", "goal": "max"}, "sources": [{"stdout": True}]},
        "container": container,
        "execution": execution,
    }


def _run(case: EngineCase, request, http_server, image_cache: Path, tmp_path: Path, script: str = SCRIPT,
         values: list[int] = VALUES):
    """``faice exec --wait --outdir`` of the sweep as ``case`` runs it: its result, run
    directory, the records by sweep value, and the prefix its outputs were PUT under."""
    found = {name: request.getfixturevalue(name) for name in case.needs}
    execution, extra = case.execution(found, tmp_path)
    prefix = f"behaviour/{case}-{uuid.uuid4().hex[:8]}"
    red = _red(http_server, _container(case, request), prefix, execution, script)
    red["sweep"]["grid"]["lr"] = values
    red_file = tmp_path / "sweep.red.json"
    red_file.write_text(json.dumps(red))
    outdir = tmp_path / "run"
    result = faice("exec", str(red_file), "--outdir", str(outdir), "--wait", "--no-progress", *extra, timeout=600,
                   env={"FAICE_IMAGE_CACHE": str(image_cache)})
    by_value = {values[index]: record for index, record in records(outdir).items()}
    return result, outdir, by_value, prefix


def _text(outdir: Path, record: dict, name: str) -> str:
    return (outdir / "batches" / record["batchId"] / name).read_text()


@pytest.mark.parametrize("case", CASES, ids=str)
def test_the_same_sweep_gives_the_same_records_on_every_engine(case, request, http_server, image_cache, tmp_path):
    result, outdir, by_value, prefix = _run(case, request, http_server, image_cache, tmp_path)
    red = json.loads((tmp_path / "sweep.red.json").read_text())
    assert result.returncode == 0, result.stderr[-3000:]

    ranked = faice("results", str(outdir), "--format", "json")
    assert ranked.returncode == 0, ranked.stderr
    rows = json.loads(ranked.stdout)
    assert [(row["state"], row["failure"]) for row in rows] == [("succeeded", None)] * len(VALUES)
    assert [row["objective"] for row in rows] == [10 * v for v in sorted(VALUES, reverse=True)]
    assert rows[0]["best"] and sum(bool(row["best"]) for row in rows) == 1

    run = json.loads((outdir / "run.json").read_text())
    assert run["state"] == "succeeded" and run["counts"] == {"succeeded": len(VALUES)}
    # faice logs reads the same files; each record names the runtime that ran it.
    assert {v: _text(outdir, r, "stdout.txt") for v, r in by_value.items()} == {v: f"score={10 * v}\n" for v in VALUES}
    image = red["container"]["settings"]["image"]["url"]
    assert {(r["runtime"], r["image"]["ref"]) for r in by_value.values()} == {(case.runtime, image)}

    words = len(WORDS.split())
    delivered = {path.name: path.read_text() for path in (http_server.root / prefix).iterdir()}
    assert delivered == {f"result-{v}.txt": f"{v} {words}\n" for v in VALUES}


@pytest.mark.parametrize("case", ON_EVERY_RUNTIME, ids=str)
def test_a_failing_sweep_fails_alike_on_every_runtime(case, request, http_server, image_cache, tmp_path):
    result, outdir, by_value, _ = _run(case, request, http_server, image_cache, tmp_path, FAILING, [1, 2])
    assert result.returncode == 1, result.stderr[-3000:]
    seen = {v: (r["state"], r.get("failureClass"), (r.get("process") or {}).get("returnCode"),
                _text(outdir, r, "stdout.txt"), _text(outdir, r, "stderr.txt")) for v, r in by_value.items()}
    assert seen == {v: ("failed", "exit-code", v + 2, f"out {v}\n", "to stderr\n") for v in (1, 2)}
    plan = faice("exec", str(tmp_path / "sweep.red.json"), "--dry-run", "--json")
    assert json.loads(plan.stdout)["runtime"] == case.runtime  # the plan names the runtime the records name
