"""What a user reads: a command missing from the image in faice's words, and a dry run that
shows where outputs go and a GPU plan even on a machine without GPUs."""

from __future__ import annotations

import json

import pytest
from engine_helpers import read, sh_red

from faice.cli import main
from faice.pipeline.options import RunOptions
from faice.pipeline.run import HostRun, run_experiment
from faice.red.prepare import load_experiment


@pytest.mark.docker
@pytest.mark.parametrize(("command", "code", "why"), [
    ("nosuchcmd", 127, "not found in"),
    ("/bin/nosuch", 127, "not found in"),
    ("/etc/hostname", 126, "not executable in"),
])
def test_a_command_the_image_cannot_run_is_said_in_faices_words(tmp_path, test_image, command, code, why):
    red = sh_red(tmp_path / "r.json", "true", test_image)
    doc = read(red)
    doc["cli"]["baseCommand"] = [command]
    red.write_text(json.dumps(doc))
    summary = run_experiment(load_experiment(str(red)), RunOptions(), tmp_path / "run")
    (entry,) = summary.to_dict()["batches"]
    record = json.loads((tmp_path / "run" / "batches" / entry["id"] / "result.json").read_text())
    assert record["failureClass"] == "exit-code", record
    assert record["message"] == f"command {command!r} {why} image {test_image} (exit code {code})"
    assert "OCI runtime" not in record["message"]
    assert record["process"]["returnCode"] == code


def _gpu_red(tmp_path):
    red = sh_red(tmp_path / "r.json", "true", "faice-test/none:1", gpus={"vendor": "nvidia", "count": 2},
                 outputs={"model": {"type": "File", "outputBinding": {"glob": "model.pt"}},
                          "log": {"type": "stdout"}},
                 job_outputs={"model": {"class": "File", "connector": {
                     "command": "ssh", "access": {"host": "store.example", "filePath": "/models/m.pt",
                                                  "auth": {"username": "u", "password": "pw-never-shown"}}}}})
    return red


def test_dry_run_shows_a_gpu_plan_without_gpus_and_where_outputs_go(tmp_path):
    red = _gpu_red(tmp_path)
    plan = HostRun(load_experiment(str(red)), RunOptions(), tmp_path / "run", gpu_inventory=[]).plan()
    assert plan["gpusPerBatch"] == 2
    assert plan["gpuNote"].startswith("not placeable here: container.settings.gpus: cannot be satisfied: 2 GPU(s)")
    (batch,) = plan["batches"]
    outputs = batch["outputs"]
    bdir = tmp_path / "run" / "batches" / batch["id"]
    assert outputs["model"] == f"ssh connector: host=store.example, filePath=/models/m.pt (kept in {bdir}/outputs/model.pt)"
    assert outputs["log"] == str(bdir / "stdout.txt")
    assert "pw-never-shown" not in json.dumps(plan)


def test_dry_run_cli_prints_gpu_note_and_outputs(tmp_path, capsys):
    red = _gpu_red(tmp_path)
    assert main(["exec", str(red), "--dry-run", "--outdir", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "GPUs: not placeable here" in out
    assert "output:     model -> ssh connector: host=store.example, filePath=/models/m.pt" in out
