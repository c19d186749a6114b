"""``faice exec --resume`` of a sweep that grew or changed, on the real Docker engine."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from engine_helpers import read, sh_red

from faice.pipeline.options import RunOptions
from faice.pipeline.results import load_results
from faice.pipeline.run import HostRun
from faice.pipeline.rundir import RunDir
from faice.red.prepare import load_experiment
from faice.secrets import REDACTOR

pytestmark = pytest.mark.docker

SCRIPT = 'echo "ran $0"; [ "$0" != 5 ]'  # n=5 fails


def resume(red: Path, outdir: Path, *, first: bool = False):
    previous = RunDir(outdir).prepare(resume=not first)
    notes: list[str] = []
    events = []
    run = HostRun(load_experiment(str(red)), RunOptions(parallel=4, resume=not first), outdir,
                  run_id=(previous or {}).get("runId"), on_note=notes.append, on_event=events.append)
    summary = run.start().wait()
    ran = {e.batch_id for e in events if e.state == "running"}
    return summary, notes, ran


def test_a_grown_sweep_runs_exactly_the_new_and_unfinished_batches(tmp_path, test_image):
    outdir = tmp_path / "run"
    red = sh_red(tmp_path / "r.json", SCRIPT, test_image, sweep={"grid": {"n": [1, 2, 3, 4, 5]}})
    summary, _, ran = resume(red, outdir, first=True)
    assert summary.to_dict()["counts"] == {"succeeded": 4, "failed": 1}
    first = {e["parameters"]["n"]: e["id"] for e in summary.to_dict()["batches"]}
    started = {n: read(outdir / "batches" / i / "result.json")["started"] for n, i in first.items()}

    red = sh_red(tmp_path / "r.json", SCRIPT, test_image, sweep={"grid": {"n": [1, 2, 3, 4, 5, 6, 7]}})
    summary, notes, ran = resume(red, outdir)
    assert "resume: 4 reused, 2 new, 1 re-run: failed" in notes
    by_n = {e["parameters"]["n"]: e["id"] for e in summary.to_dict()["batches"]}
    assert ran == {by_n[5], by_n[6], by_n[7]}  # exactly the new and the failed one
    assert {n: by_n[n] for n in first} == first  # the old batches keep their ids
    for n in (1, 2, 3, 4):
        assert read(outdir / "batches" / by_n[n] / "result.json")["started"] == started[n]
    assert sum("is new: new parameter values" in line for line in notes) == 2
    assert summary.to_dict()["counts"] == {"succeeded": 6, "failed": 1}


def test_a_changed_input_makes_batches_new_with_the_reason(tmp_path, test_image):
    outdir = tmp_path / "run"
    red = sh_red(tmp_path / "r.json", 'echo "v1 $0"', test_image, sweep={"grid": {"n": [1, 2]}})
    resume(red, outdir, first=True)
    red = sh_red(tmp_path / "r.json", 'echo "v2 $0"', test_image, sweep={"grid": {"n": [1, 2]}})
    summary, notes, ran = resume(red, outdir)
    assert notes[0].startswith("resume: 0 reused, 2 new, 2 no longer in the RED file")
    assert sum("is new: its inputs or outputs changed" in line for line in notes) == 2
    assert len(ran) == 2 and summary.exit_code == 0
    # The old batches' directories stay, but faice results ranks this run's batches only.
    current = {e["id"] for e in summary.to_dict()["batches"]}
    old = {p.name for p in (outdir / "batches").iterdir()} - current
    assert len(old) == 2
    results = load_results(outdir)
    assert {row["batch"] for row in results.rows} == current and set(results.dropped) == old
    shown = subprocess.run([sys.executable, "-m", "faice", "results", str(outdir), "--format", "csv"],
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and not any(batch in shown.stdout for batch in old)
    assert "2 batch directories under batches/ are not part of this run" in shown.stderr
    # The tool itself changed: said so.
    data = json.loads(red.read_text())
    data["cli"]["doc"] = "a new version of the tool"
    red.write_text(json.dumps(data))
    summary, notes, ran = resume(red, outdir)
    assert sum("is new: the tool (cli) changed" in line for line in notes) == 2


def test_the_run_directory_keeps_the_red_file_without_secrets_and_the_version(tmp_path, test_image):
    import faice

    red = sh_red(tmp_path / "r.json", "true", test_image)
    data = json.loads(red.read_text())
    data["container"]["settings"]["image"]["auth"] = {"username": "me", "password": "{{db_password}}"}
    red.write_text(json.dumps(data))
    (tmp_path / "vars.yml").write_text("db_password: hunter2-very-secret\n")
    from faice.red.variables import VariableSources

    experiment = load_experiment(str(red), variables=VariableSources(files=[str(tmp_path / "vars.yml")], non_interactive=True))
    outdir = tmp_path / "run"
    HostRun(experiment, RunOptions(disable_pull=True), outdir).start().wait()
    kept = (outdir / "red.json").read_text()
    assert "hunter2-very-secret" not in kept and json.loads(kept)["cli"] == data["cli"]
    assert json.loads(kept)["container"]["settings"]["image"]["auth"]["username"] == "me"
    assert read(outdir / "run.json")["faiceVersion"] == faice.__version__
    REDACTOR.clear()


def test_a_sweep_grown_on_an_inner_axis_keeps_indexes_through_the_cli(tmp_path, test_image):
    """$(sweep.index) in the template and an inner axis grown: ``faice exec --resume`` reuses
    every batch that succeeded, each keeps its index (and index-named values), and the new
    batches are numbered after them (issue 20, review 1.6)."""
    def write(ms: list[int]) -> Path:
        red = sh_red(tmp_path / "r.json", 'echo "n=$0 m=$2 tag=$1"', test_image,
                     sweep={"grid": {"n": [1, 2], "m": ms}},
                     extra_inputs={"tag": {"type": "string", "inputBinding": {"position": 2}},
                                   "m": {"type": "int", "inputBinding": {"position": 3}}})
        data = json.loads(red.read_text())
        data["inputs"].update(tag="i$(sweep.index)", m=0)
        red.write_text(json.dumps(data))
        return red

    def faice(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "faice", "exec", *args, "--no-progress"],
                              capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)

    outdir = tmp_path / "run"
    first = faice(str(write([1, 2])), "--outdir", str(outdir))
    assert first.returncode == 0, first.stderr
    before = {e["id"]: (e["index"], (outdir / "batches" / e["id"] / "stdout.txt").read_text())
              for e in read(outdir / "run.json")["batches"]}
    assert sorted(text for _, text in before.values()) == [
        "n=1 m=1 tag=i0\n", "n=1 m=2 tag=i1\n", "n=2 m=1 tag=i2\n", "n=2 m=2 tag=i3\n"]
    grown = faice(str(write([1, 2, 3])), "--outdir", str(outdir), "--resume")
    assert grown.returncode == 0, grown.stderr
    assert "resume: 4 reused, 2 new" in grown.stderr and "re-run" not in grown.stderr
    after = {e["id"]: (e["index"], (outdir / "batches" / e["id"] / "stdout.txt").read_text())
             for e in read(outdir / "run.json")["batches"]}
    assert {i: after[i] for i in before} == before  # same index, untouched output
    new = sorted(after[i] for i in after.keys() - before.keys())
    assert new == [(4, "n=1 m=3 tag=i4\n"), (5, "n=2 m=3 tag=i5\n")]
