"""``faice results RUN --ro-crate DIR`` and the run page's download: a Process Run Crate of a
real run (two batches in Docker, a secret input), checked by rocrate-validator."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path
from urllib.parse import unquote

import pytest
from crate_validation import validate
from ui_helpers import start_ui

from faice.pipeline.options import RunOptions
from faice.pipeline.run import run_experiment
from faice.red.prepare import load_experiment
from faice.secrets import MASK, REDACTOR

SECRET = "crate-s3cr3t-" + "9f2c41d7"


@pytest.fixture(autouse=True)
def _clean_redactor():
    yield
    REDACTOR.clear()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, test_image, http_server) -> Path:
    """A sweep of two batches: each prints score=N, writes an output file and reads an input
    file over http, whose connector access holds a password (the RED's secret)."""
    base = tmp_path_factory.mktemp("crate")
    served = http_server.root / f"ui-crate-{base.name}.txt"
    served.write_text("input data\n")
    red = {
        "redVersion": "9",
        "cli": {"cwlVersion": "v1.0", "class": "CommandLineTool", "baseCommand": ["sh", "-c"],
                "doc": "prints a score, writes result.txt",
                "inputs": {"script": {"type": "string", "inputBinding": {"position": 0}},
                           "n": {"type": "int", "inputBinding": {"position": 1}},
                           "data": {"type": "File", "inputBinding": {"position": 2}}},
                "outputs": {}},
        "inputs": {"script": 'echo "score=0.$0"; echo "batch $0" > result.txt; test -s "$1"', "n": 0,
                   "data": {"class": "File", "connector": {"command": "http", "access": {
                       "url": f"{http_server.url}/{served.name}",
                       "auth": {"username": http_server.user, "password": SECRET}}}}},
        "outputs": {},
        "sweep": {"grid": {"n": [3, 7]}},
        "metrics": {"objective": {"name": "score", "goal": "max"}, "sources": [{"stdout": True}]},
        "container": {"engine": "docker", "settings": {"image": {"url": test_image}}},
        "execution": {"engine": "ccfaice", "settings": {}},
    }
    path = base / "crate.red.json"
    path.write_text(json.dumps(red))
    try:
        summary = run_experiment(load_experiment(str(path)), RunOptions(parallel=2), base / "run")
    finally:
        served.unlink()
    assert summary.exit_code == 0, summary.to_dict()
    return base / "run"


def write_crate(run: Path, target: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "faice", "results", str(run), "--ro-crate", str(target)],
                          capture_output=True, text=True, timeout=120)


def test_the_crate_passes_the_process_run_crate_profile(finished_run, tmp_path, test_image):
    result = write_crate(finished_run, tmp_path / "crate")
    assert result.returncode == 0, result.stderr
    report = validate(tmp_path / "crate", tmp_path / "validator-cache")
    assert report["passed"] is True, json.dumps(report.get("issues"), indent=1)[:4000]
    graph = {e["@id"]: e for e in json.loads((tmp_path / "crate" / "ro-crate-metadata.json").read_text())["@graph"]}
    root = graph["./"]
    assert root["conformsTo"] == {"@id": "https://w3id.org/ro/wfrun/process/0.5"}
    actions = [graph[m["@id"]] for m in root["mentions"]]
    assert len(actions) == 2 and {a["@type"] for a in actions} == {"CreateAction"}
    image = graph["#image"]
    assert image["identifier"] == test_image and image["@type"] == "ContainerImage"
    assert graph["tool.cwl"]["@type"] == ["File", "SoftwareSourceCode", "SoftwareApplication"]
    values = set()
    for action in actions:
        assert action["instrument"] == {"@id": "tool.cwl"} and action["containerImage"] == {"@id": "#image"}
        assert action["startTime"] and action["endTime"]
        assert action["actionStatus"] == {"@id": "http://schema.org/CompletedActionStatus"}
        parameters = {graph[o["@id"]]["name"]: graph[o["@id"]]["value"] for o in action["object"]}
        values.add(parameters["n"])
        results = [graph[r["@id"]] for r in action["result"]]
        (score,) = [r for r in results if r["@type"] == "PropertyValue" and r["name"] == "score"]
        assert score["value"] == parameters["n"] / 10
        (output,) = [r for r in results if r["@type"] == "File"]
        data = (tmp_path / "crate" / unquote(output["@id"])).read_bytes()
        assert data == f"batch {parameters['n']}\n".encode()
        assert output["sha256"] == hashlib.sha256(data).hexdigest() and output["contentSize"] == str(len(data))
        assert any(graph[u["@id"]]["name"] == "total" for u in action["resourceUsage"])
    assert values == {3, 7}
    assert root["about"]["@id"] in {a["@id"] for a in actions}  # the best batch (n=7)
    red = json.loads((tmp_path / "crate" / "red.json").read_text())
    assert red["sweep"] == {"grid": {"n": [3, 7]}}
    assert red["inputs"]["data"]["connector"]["access"]["auth"]["password"] == MASK  # there, masked
    for path in (tmp_path / "crate").rglob("*"):  # never a secret, in any file of the crate
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_the_validator_is_not_vacuous(finished_run, tmp_path):
    """The same crate without the actions' instrument fails the profile."""
    write_crate(finished_run, tmp_path / "crate")
    metadata = tmp_path / "crate" / "ro-crate-metadata.json"
    document = json.loads(metadata.read_text())
    for entity in document["@graph"]:
        entity.pop("instrument", None)
    metadata.write_text(json.dumps(document))
    assert validate(tmp_path / "crate", tmp_path / "validator-cache")["passed"] is False


def test_the_run_page_downloads_the_same_crate(finished_run, tmp_path):
    server = start_ui(tmp_path / "ui.log", str(finished_run))
    try:
        page = server.get(f"/runs/{finished_run.name}/").text
        assert f'href="/runs/{finished_run.name}/ro-crate.zip"' in page
        download = server.get(f"/runs/{finished_run.name}/ro-crate.zip")
        assert download.status_code == 200 and download.headers["Content-Type"] == "application/zip"
        with zipfile.ZipFile(io.BytesIO(download.content)) as archive:
            names = archive.namelist()
            archive.extractall(tmp_path / "unzipped")
        assert "ro-crate-metadata.json" in names and "tool.cwl" in names and "red.json" in names
        assert validate(tmp_path / "unzipped", tmp_path / "validator-cache")["passed"] is True
        assert SECRET.encode() not in download.content
    finally:
        server.stop()


def test_a_crate_never_lands_in_a_directory_that_holds_something(finished_run, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine\n")
    result = write_crate(finished_run, tmp_path / "full")
    assert result.returncode == 2 and "not an empty directory" in result.stderr and "Traceback" not in result.stderr
    assert sorted(p.name for p in (tmp_path / "full").iterdir()) == ["keep.txt"]
    assert not list(tmp_path.glob(".full.partial-*"))


def test_gpus_and_timings_are_the_actions_resource_usage(tmp_path):
    """A batch record that names its GPUs (written here: no GPU on the test machine; the
    records are the ones a GPU batch leaves) gives them to its action's resourceUsage."""
    from faice.pipeline.records import BatchState, new_batch_record
    from faice.pipeline.rundir import RunDir

    outdir = tmp_path / "gpu-run"
    record = new_batch_record("b-gpu", 0, {"lr": 0.1}, run_id="g", command=["train"], state=BatchState.SUCCEEDED)
    record.gpus = [{"index": "0", "uuid": "GPU-4f1c2b9e-0000-1111-2222-333344445555", "name": "NVIDIA H100 80GB HBM3"}]
    record.timings = {"total": 12.5, "run": 11.0}
    record.finished = record.started
    RunDir(outdir).write_record(record)
    RunDir(outdir).write_run({"runId": "g", "image": {"ref": "example.org/lab/train:1.0@sha256:" + "ab" * 32}},
                     [record.entry()])
    assert write_crate(outdir, tmp_path / "crate").returncode == 0
    report = validate(tmp_path / "crate", tmp_path / "validator-cache")
    assert report["passed"] is True, json.dumps(report.get("issues"), indent=1)[:3000]
    graph = {e["@id"]: e for e in json.loads((tmp_path / "crate" / "ro-crate-metadata.json").read_text())["@graph"]}
    usage = [graph[u["@id"]] for u in graph["#batch-b-gpu"]["resourceUsage"]]
    assert {(u["name"], u["value"]) for u in usage} >= {("total", 12.5), ("run", 11.0),
                                                        ("GPU 0", "GPU-4f1c2b9e-0000-1111-2222-333344445555")}
    assert any(u.get("description") == "NVIDIA H100 80GB HBM3" for u in usage)
    image = graph["#image"]
    assert image["sha256"] == "ab" * 32 and image["registry"] == "example.org" and image["tag"] == "1.0"
    assert image["name"] == "example.org/lab/train"
