"""The local engine against the real Docker engine and the faice-test images."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import threading
import time
from pathlib import Path

import pytest
from engine_helpers import faice_containers, read, sh_red

from faice.errors import EngineError, UsageError
from faice.pipeline.options import RunOptions
from faice.pipeline.run import HostRun, run_experiment
from faice.pipeline.rundir import RunDir
from faice.red.prepare import load_experiment

pytestmark = pytest.mark.docker

FILE_OUT = {"result": {"type": "File", "outputBinding": {"glob": "result.txt"}}}


def batch_dirs(outdir: Path) -> dict[str, Path]:
    return {p.name: p for p in (outdir / "batches").iterdir()}


def test_three_batch_sweep_records_outputs_and_streams(tmp_path, docker_client, test_image):
    red = sh_red(
        tmp_path / "sweep.red.json",
        'echo "n=$0" > result.txt; echo "out $0"; echo "err $0" >&2',
        test_image,
        sweep={"grid": {"n": [1, 2, 3]}},
        outputs={**FILE_OUT, "log": {"type": "stdout"}, "errors": {"type": "stderr"}},
        stdout="log.txt",
    )
    events = []
    summary = run_experiment(load_experiment(str(red)), RunOptions(parallel=3), tmp_path / "run",
                             on_event=events.append)

    assert summary.exit_code == 0
    run = read(tmp_path / "run" / "run.json")
    assert run["state"] == "succeeded" and run["counts"] == {"succeeded": 3}
    assert [b["parameters"] for b in run["batches"]] == [{"n": 1}, {"n": 2}, {"n": 3}]
    for entry in run["batches"]:
        bdir = tmp_path / "run" / "batches" / entry["id"]
        n = entry["parameters"]["n"]
        record = read(bdir / "result.json")
        assert record["state"] == "succeeded"
        assert record["command"] == ["sh", "-c", record["command"][2], str(n)]
        assert record["process"] == {"returnCode": 0, "executed": True, "stdout": "stdout.txt", "stderr": "stderr.txt"}
        result = bdir / "outputs" / "result.txt"
        assert result.read_text() == f"n={n}\n"
        out = record["outputs"]["result"]
        assert out["path"] == "/cc/outputs/result.txt"
        assert out["sha256"] == hashlib.sha256(result.read_bytes()).hexdigest() and out["size"] == result.stat().st_size
        assert (bdir / "stdout.txt").read_text() == f"out {n}\n"
        assert (bdir / "stderr.txt").read_text() == f"err {n}\n"
        assert (bdir / "outputs" / "log.txt").read_text() == f"out {n}\n"  # cli.stdout names a file
        assert record["outputs"]["errors"]["size"] == len(f"err {n}\n")
        assert {"run", "collect", "total"} <= set(record["timings"])
        assert record["image"]["ref"] == test_image and record["image"]["id"].startswith("sha256:")
    assert {e.state for e in events} >= {"pending", "running", "succeeded"}
    assert faice_containers(docker_client, run["runId"]) == []
    assert not list(Path("/tmp").glob(f"faice-run-{run['runId']}-*"))


def test_batches_run_concurrently(tmp_path, docker_client, test_image):
    red = sh_red(tmp_path / "r.json", "sleep 1.5", test_image, sweep={"grid": {"n": [1, 2, 3]}})
    started = time.monotonic()
    summary = run_experiment(load_experiment(str(red)), RunOptions(parallel=3), tmp_path / "run")
    assert summary.exit_code == 0
    assert time.monotonic() - started < 4.0  # serial would take ≥ 4.5 s


def test_optional_output_missing_is_null(tmp_path, test_image):
    red = sh_red(tmp_path / "r.json", "true", test_image,
                 outputs={"maybe": {"type": "File?", "outputBinding": {"glob": "*.csv"}}})
    summary = run_experiment(load_experiment(str(red)), RunOptions(), tmp_path / "run")
    assert summary.exit_code == 0
    (bdir,) = batch_dirs(tmp_path / "run").values()
    assert read(bdir / "result.json")["outputs"]["maybe"] == {"class": "File?", "glob": "*.csv", "path": None}


def test_missing_or_ambiguous_output_fails_only_that_batch(tmp_path, docker_client, test_image):
    # n=0: no result file; n=1: exactly one; n=2: two matches for the glob.
    red = sh_red(
        tmp_path / "r.json",
        'i=0; while [ $i -lt "$0" ]; do echo $i > "res$i.txt"; i=$((i+1)); done',
        test_image,
        sweep={"grid": {"n": [0, 1, 2]}},
        outputs={"result": {"type": "File", "outputBinding": {"glob": "res*.txt"}}},
    )
    summary = run_experiment(load_experiment(str(red)), RunOptions(parallel=3), tmp_path / "run")
    assert summary.exit_code == 1
    by_n = {e["parameters"]["n"]: e for e in summary.to_dict()["batches"]}
    assert by_n[1]["state"] == "succeeded"
    assert by_n[0]["state"] == "failed" and by_n[0]["failureClass"] == "missing-output"
    assert "no file matches glob 'res*.txt'" in by_n[0]["message"]
    assert by_n[2]["state"] == "failed" and by_n[2]["failureClass"] == "missing-output"
    assert "ambiguous" in by_n[2]["message"]
    assert summary.to_dict()["counts"] == {"failed": 2, "succeeded": 1}


def test_non_zero_exit_is_exit_code_failure_with_stderr_in_debug_info(tmp_path, test_image):
    red = sh_red(tmp_path / "r.json", "echo broken input >&2; exit 3", test_image)
    summary = run_experiment(load_experiment(str(red)), RunOptions(), tmp_path / "run")
    (entry,) = summary.to_dict()["batches"]
    record = read(tmp_path / "run" / "batches" / entry["id"] / "result.json")
    assert record["state"] == "failed" and record["failureClass"] == "exit-code"
    assert record["process"]["returnCode"] == 3
    assert "broken input" in record["debugInfo"]


def test_out_of_memory_is_classified(tmp_path, test_image):
    red = sh_red(tmp_path / "r.json", 'python3 -c "b = bytearray(600 * 2**20); print(len(b))"', test_image, ram=256)
    summary = run_experiment(load_experiment(str(red)), RunOptions(), tmp_path / "run")
    (entry,) = summary.to_dict()["batches"]
    assert entry["state"] == "failed" and entry["failureClass"] == "oom"
    assert "out of memory" in entry["message"] and "256 MB" in entry["message"]


def test_timeout_kills_the_container(tmp_path, docker_client, test_image):
    red = sh_red(tmp_path / "r.json", "sleep 30", test_image)
    started = time.monotonic()
    summary = run_experiment(load_experiment(str(red)), RunOptions(timeout=1.5), tmp_path / "run")
    assert time.monotonic() - started < 10
    (entry,) = summary.to_dict()["batches"]
    assert entry["state"] == "failed" and entry["failureClass"] == "timeout"
    assert faice_containers(docker_client, summary.to_dict()["runId"]) == []


def test_image_user_cc_writes_outputs_and_results_belong_to_the_runner(tmp_path, user_image):
    red = sh_red(tmp_path / "r.json", 'id -u > result.txt; mkdir -p sub && echo x > sub/f', user_image, outputs=FILE_OUT)
    summary = run_experiment(load_experiment(str(red)), RunOptions(), tmp_path / "run")
    assert summary.exit_code == 0, summary.to_dict()
    (bdir,) = batch_dirs(tmp_path / "run").values()
    assert (bdir / "outputs" / "result.txt").read_text().strip() == "1000"  # ran as the image's user
    for path in [bdir / "outputs", *(bdir / "outputs").rglob("*")]:
        info = path.lstat()
        assert info.st_uid == os.geteuid(), path
        assert info.st_mode & stat.S_IRUSR
    assert stat.S_IMODE((bdir / "outputs").stat().st_mode) == 0o755
    shutil.rmtree(tmp_path / "run")  # removable by the user who ran faice


def test_resume_skips_succeeded_batches_and_refuses_a_non_empty_outdir_without_it(tmp_path, test_image):
    red = sh_red(tmp_path / "r.json", 'date +%s%N > result.txt', test_image,
                 sweep={"grid": {"n": [1, 2, 3]}}, outputs=FILE_OUT)
    outdir = tmp_path / "run"
    first = run_experiment(load_experiment(str(red)), RunOptions(parallel=3), outdir)
    assert first.exit_code == 0
    dirs = batch_dirs(outdir)
    ids = sorted(dirs)
    before = {i: (dirs[i] / "outputs" / "result.txt").read_text() for i in ids}
    # Pretend the second batch failed last time.
    record = read(dirs[ids[1]] / "result.json")
    record["state"] = "failed"
    (dirs[ids[1]] / "result.json").write_text(__import__("json").dumps(record))

    with pytest.raises(UsageError, match="not empty"):
        run_experiment(load_experiment(str(red)), RunOptions(), outdir)

    again = run_experiment(load_experiment(str(red)), RunOptions(resume=True), outdir)
    assert again.exit_code == 0
    assert again.to_dict()["runId"] == first.to_dict()["runId"]
    after = {i: (dirs[i] / "outputs" / "result.txt").read_text() for i in ids}
    assert after[ids[0]] == before[ids[0]] and after[ids[2]] == before[ids[2]]
    assert after[ids[1]] != before[ids[1]]

    # A changed input makes every batch new (tests/engines/local/test_resume_grow.py has the details):
    # they run, and run.json lists the batches of the RED file as it is now.
    changed = sh_red(tmp_path / "other.json", 'date > result.txt', test_image,
                     sweep={"grid": {"n": [1, 2, 3]}}, outputs=FILE_OUT)
    third = run_experiment(load_experiment(str(changed)), RunOptions(resume=True), outdir)
    assert third.exit_code == 0 and not {e["id"] for e in third.to_dict()["batches"]} & set(ids)


def test_fail_fast_stops_starting_batches(tmp_path, test_image):
    red = sh_red(tmp_path / "r.json", 'exit "$0"', test_image, sweep={"grid": {"n": [1, 0, 0]}})
    summary = run_experiment(load_experiment(str(red)), RunOptions(parallel=1, fail_fast=True), tmp_path / "run")
    states = [e["state"] for e in summary.to_dict()["batches"]]
    assert states == ["failed", "cancelled", "cancelled"]
    assert summary.exit_code == 1


def test_batches_run_alone_write_only_their_records_and_summary_rebuilds(tmp_path, test_image):
    """What two Slurm tasks do: each runs one batch plan by itself (no run around it), gets its
    record back, and only ``batches/<id>/`` is written; run.json is rebuilt from the records."""
    import threading

    from faice.pipeline.host import Host
    from faice.pipeline.plan import plan_batches
    from faice.runtime.gpus import GpuAllocator
    from faice.secrets import Redactor

    red = sh_red(tmp_path / "r.json", "echo $0 > result.txt", test_image, sweep={"grid": {"n": [1, 2]}},
                 outputs=FILE_OUT)
    experiment = load_experiment(str(red))
    outdir = tmp_path / "shared"
    host = Host(GpuAllocator([]))
    for plan in plan_batches(experiment):
        record = host.run_alone(plan, run_id="slurmrun", outdir=outdir, redactor=Redactor(), options=RunOptions(),
                                cancel=threading.Event())
        assert record.state == "succeeded" and record.run_id == "slurmrun"
        assert read(outdir / "batches" / plan.id / "result.json") == record.to_dict()
    assert not (outdir / "run.json").exists()
    assert sorted(batch_dirs(outdir)) == sorted(b.id for b in experiment.batches)
    summary = RunDir(outdir).rebuild()
    assert summary["state"] == "succeeded" and summary["counts"] == {"succeeded": 2}
    assert read(outdir / "run.json")["counts"] == {"succeeded": 2}


def test_cancel_one_batch_of_a_running_run(tmp_path, docker_client, test_image):
    red = sh_red(tmp_path / "r.json", 'if [ "$0" = 1 ]; then sleep 60; fi', test_image,
                 sweep={"grid": {"n": [1, 2]}})
    experiment = load_experiment(str(red))
    (tmp_path / "run").mkdir()
    running = threading.Event()
    local = HostRun(experiment, RunOptions(parallel=2, stop_grace=1), tmp_path / "run",
                     on_event=lambda e: running.set() if e.phase == "run" and e.index == 0 else None)
    local.start()
    assert running.wait(20)
    time.sleep(0.5)
    local.cancel(experiment.batches[0].id)
    summary = local.wait(20)
    assert summary is not None
    states = {e["index"]: e["state"] for e in summary.to_dict()["batches"]}
    assert states == {0: "cancelled", 1: "succeeded"}
    assert faice_containers(docker_client, local.run_id) == []


def test_file_connector_inputs_are_read_only_and_outputs_are_sent(tmp_path, docker_client, test_image):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.csv").write_text("a,b\n1,2\n")
    (data / "images").mkdir()
    (data / "images" / "x.png").write_text("png")
    results = tmp_path / "results"
    results.mkdir()
    red = sh_red(
        tmp_path / "r.json",
        'cat "$1" > copy.csv; ls "$2" > listing.txt; echo "n=$0" > summary.txt; '
        'if touch "$1" 2>/dev/null; then echo writable >&2; exit 9; fi',
        test_image,
        sweep={"grid": {"n": [1, 2]}},
        extra_inputs={
            "table": {"type": "File", "inputBinding": {"position": 2}},
            "images": {"type": "Directory", "inputBinding": {"position": 3}},
        },
        outputs={"summary": {"type": "File", "outputBinding": {"glob": "summary.txt"}},
                 "copy": {"type": "File", "outputBinding": {"glob": "copy.csv"}}},
        job_outputs={"summary": {"class": "File", "connector": {
            "command": "file", "access": {"path": str(results / "summary_$(sweep.n).txt")}}}},
    )
    doc = read(red)
    doc["inputs"]["table"] = {"class": "File", "connector": {"command": "file", "access": {"path": str(data / "train.csv")}}}
    doc["inputs"]["images"] = {"class": "Directory", "connector": {"command": "file", "access": {"path": str(data / "images")}}}
    red.write_text(__import__("json").dumps(doc))

    summary = run_experiment(load_experiment(str(red)), RunOptions(parallel=2), tmp_path / "run")
    assert summary.exit_code == 0, summary.to_dict()
    for entry in summary.to_dict()["batches"]:
        bdir = tmp_path / "run" / "batches" / entry["id"]
        record = read(bdir / "result.json")
        assert record["command"][-2:] == ["/cc/inputs/table/train.csv", "/cc/inputs/images/images"]
        assert (bdir / "outputs" / "copy.csv").read_text() == "a,b\n1,2\n"
        assert (bdir / "outputs" / "listing.txt").read_text() == "x.png\n"
        assert record["inputs"]["table"]["size"] == 8
        assert record["outputs"]["summary"]["sent"] is True
    assert sorted(p.name for p in results.iterdir()) == ["summary_1.txt", "summary_2.txt"]
    assert (results / "summary_2.txt").read_text() == "n=2\n"


def test_bad_connector_access_fails_before_any_container(tmp_path, docker_client, test_image):
    red = sh_red(tmp_path / "r.json", "true", test_image,
                 extra_inputs={"table": {"type": "File", "inputBinding": {}}})
    doc = read(red)
    doc["inputs"]["table"] = {"class": "File", "connector": {"command": "file",
                                                             "access": {"path": str(tmp_path / "missing.csv")}}}
    red.write_text(__import__("json").dumps(doc))
    with pytest.raises(EngineError, match=r"batches\[0\]\.inputs\.table"):
        run_experiment(load_experiment(str(red)), RunOptions(), tmp_path / "run")
    assert not (tmp_path / "run" / "batches").exists()


def test_upstream_batches_list_and_only_preserved_environment(tmp_path, monkeypatch, test_image):
    red = sh_red(tmp_path / "r.json", 'env > env.txt; echo "$0" > result.txt', test_image, outputs=FILE_OUT)
    doc = read(red)
    template = doc.pop("inputs")
    doc.pop("outputs")
    doc["batches"] = [{"inputs": {**template, "n": 7}}, {"inputs": {**template, "n": 8}}]
    red.write_text(__import__("json").dumps(doc))
    monkeypatch.setenv("FAICE_KEEP_ME", "kept-value")
    monkeypatch.setenv("FAICE_HOST_ONLY", "host-only-value")
    options = RunOptions(preserve_environment=["FAICE_KEEP_ME", "FAICE_NOT_SET"])
    summary = run_experiment(load_experiment(str(red)), options, tmp_path / "run")
    assert summary.exit_code == 0
    for entry in summary.to_dict()["batches"]:
        outputs = tmp_path / "run" / "batches" / entry["id"] / "outputs"
        assert (outputs / "result.txt").read_text() == f"{7 + entry['index']}\n"
        env = (outputs / "env.txt").read_text()
        assert "FAICE_KEEP_ME=kept-value" in env
        assert "host-only-value" not in env and "FAICE_NOT_SET" not in env


def test_max_failures_stops_a_broken_sweep(tmp_path, test_image):
    red = sh_red(tmp_path / "r.json", 'exit "$0"', test_image, sweep={"grid": {"n": [1, 1, 0, 0]}})
    summary = run_experiment(load_experiment(str(red)), RunOptions(parallel=1, max_failures=2), tmp_path / "run")
    assert [e["state"] for e in summary.to_dict()["batches"]] == ["failed", "failed", "cancelled", "cancelled"]
    assert summary.to_dict()["counts"] == {"cancelled": 2, "failed": 2}


def test_protected_values_never_reach_the_run_directory(tmp_path, test_image):
    from faice.secrets import REDACTOR

    secret = "hunter2-" + os.urandom(4).hex()
    REDACTOR.add(secret)  # what variable filling does for every protected value
    red = sh_red(tmp_path / "r.json", f'echo "token {secret}"; echo "{secret}" >&2; exit 1', test_image)
    run_experiment(load_experiment(str(red)), RunOptions(), tmp_path / "run")
    written = [p for p in (tmp_path / "run").rglob("*") if p.is_file() and p.parent.name != "outputs"]
    assert {p.name for p in written} >= {"run.json", "result.json", "stdout.txt", "stderr.txt"}
    for path in written:
        assert secret not in path.read_text(), path
    assert "token ********" in next(p for p in written if p.name == "stdout.txt").read_text()


def test_absent_image_with_disable_pull_or_failed_pull_is_a_clear_error(tmp_path, docker_client):
    # 127.0.0.1:9 has no registry: the pull fails at once and never leaves this host.
    red = sh_red(tmp_path / "r.json", "true", "127.0.0.1:9/faice-absent/image:1")
    with pytest.raises(EngineError, match="not present and pulling is off"):
        run_experiment(load_experiment(str(red)), RunOptions(disable_pull=True), tmp_path / "a")
    with pytest.raises(EngineError, match=r"container.settings.image.url: pulling '127.0.0.1:9/faice-absent/image:1' failed"):
        run_experiment(load_experiment(str(red)), RunOptions(), tmp_path / "b")
    assert not (tmp_path / "b" / "batches").exists()
