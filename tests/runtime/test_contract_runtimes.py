"""Apptainer, Enroot and Pyxis against their documented command-line contract.

NONE OF THEM RUNS HERE: they cannot be installed on the project's machines (Pyxis is a SPANK
plugin of ``srun`` on GPU clusters). A recording stand-in (``stand_in/runtime_stand_in.py``,
installed on PATH as ``apptainer``, ``enroot`` and, for Pyxis, ``srun``)
records each argv and environment and acts out the contract (a pull writes the SIF, a batch
writes its output), so these tests check the exact commands faice builds (golden argv), that
no value reaches them as an argument, that the image is fetched once under the lock, and that
the runtime's own failure is told from the command's. ``bench/runtime-check.sh`` runs the real
programs on a cluster node."""

from __future__ import annotations

import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from runtime_helpers import faice, records, submit_and_wait, sweep_red

STAND_IN = Path(__file__).parent / "stand_in" / "runtime_stand_in.py"
GPUS = [{"index": "0", "uuid": "GPU-aaa", "vram": 16000}, {"index": "1", "uuid": "GPU-bbb", "vram": 16000}]
SECRET = "s3cret-in-the-host-env"


@pytest.fixture
def stand_in(tmp_path, monkeypatch):
    """``apptainer``, ``enroot`` and ``srun`` on PATH, all the recording stand-in; its log's entries."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "stand-in.jsonl"
    for name in ("apptainer", "enroot", "srun"):
        program = bin_dir / name
        program.write_text(f"#!{sys.executable}\nLOG = {str(log)!r}\n" + STAND_IN.read_text())
        program.chmod(0o755)
    log.touch()
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("FAICE_IMAGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("FAICE_GPU_INVENTORY", json.dumps(GPUS))
    monkeypatch.setenv("FAICE_TEST_SECRET_VALUE", SECRET)
    return lambda: [json.loads(line) for line in log.read_text().splitlines()]


def gpu_red(tmp_path, registry_image: str = "127.0.0.1:5443/faice-test/base:bookworm", engine: str = "docker",
            batches: int = 2) -> Path:
    from runtime_helpers import Registry

    registry = Registry("127.0.0.1:5443", "faicereg", "faicereg-secret", Path("/dev/null"), registry_image)
    red = sweep_red(tmp_path / "gpu.red.json", registry, engine=engine, batches=batches)
    data = json.loads(red.read_text())
    data["container"]["settings"]["gpus"] = {"vendor": "nvidia", "count": 1}
    red.write_text(json.dumps(data))
    return red


def run_with_the_secret(red: Path, tmp_path: Path) -> Path:
    """``faice exec`` of ``red`` with FAICE_TEST_SECRET_VALUE passed into its batches: the run directory."""
    outdir = tmp_path / "run"
    result = faice("exec", str(red), "--outdir", str(outdir), "--no-progress",
                   "--preserve-environment", "FAICE_TEST_SECRET_VALUE")
    assert result.returncode == 0, result.stderr[-2000:]
    return outdir


def batch_calls(calls: list[dict], verb: str) -> list[dict]:
    return [c for c in calls if c["argv"][1] == verb]


def test_apptainer_pulls_once_to_a_sif_then_execs_each_batch_contained_with_read_only_inputs(stand_in, tmp_path):
    red = gpu_red(tmp_path, engine="apptainer")
    outdir = run_with_the_secret(red, tmp_path)
    calls = stand_in()
    (pull,) = batch_calls(calls, "pull")
    sif = Path(pull["argv"][3])
    assert pull["argv"][:3] == ["apptainer", "pull", "--force"]
    assert pull["argv"][4] == "docker://127.0.0.1:5443/faice-test/base:bookworm"
    assert pull["env"]["APPTAINER_DOCKER_USERNAME"] == "faicereg"
    assert pull["env"]["APPTAINER_DOCKER_PASSWORD"] == "faicereg-secret"  # in its environment only
    assert "faicereg-secret" not in " ".join(pull["argv"])
    runs = batch_calls(calls, "exec")
    assert len(runs) == 2
    found = records(outdir)
    for index, call in enumerate(sorted(runs, key=lambda c: c["argv"][-2])):
        record = found[index]
        outputs = outdir.resolve() / "batches" / record["batchId"] / "outputs"
        staged = record["inputs"]["data"]["hostPath"]
        # The golden argv: Apptainer's documented options, inputs read-only, GPUs by --nv.
        assert call["argv"] == [
            "apptainer", "exec", "--containall", "--cleanenv", "--no-home",
            "--bind", f"{outputs}:/cc/outputs:rw", "--bind", f"{staged}:/cc/inputs/data/data.txt:ro",
            "--pwd", "/cc/outputs", "--nv", str(sif.parent / "127.0.0.1_5443_faice-test_base_bookworm-4a0a17633380.sif"),
            "sh", "-c", record["command"][2], str(index), "/cc/inputs/data/data.txt"]
        env = call["env"]
        assert env["APPTAINERENV_FAICE_TEST_SECRET_VALUE"] == SECRET  # through its environment …
        assert SECRET not in " ".join(call["argv"])  # … never its arguments
        uuid = record["gpus"][0]["uuid"]
        assert env["APPTAINERENV_CUDA_VISIBLE_DEVICES"] == env["APPTAINERENV_NVIDIA_VISIBLE_DEVICES"] == uuid
        assert (outputs / "result.txt").read_text() == "from the stand-in\n"
        assert (outdir / "batches" / record["batchId"] / "stdout.txt").read_text() == "apptainer stand-in ran the batch\n"
    assert {found[0]["gpus"][0]["uuid"], found[1]["gpus"][0]["uuid"]} <= {"GPU-aaa", "GPU-bbb"}


def test_enroot_imports_once_and_starts_each_batch_with_mounts_env_names_and_its_gpus(stand_in, tmp_path):
    red = gpu_red(tmp_path, engine="enroot", batches=1)
    outdir = run_with_the_secret(red, tmp_path)
    calls = stand_in()
    (imported,) = batch_calls(calls, "import")
    assert imported["argv"][:3] == ["enroot", "import", "--output"]
    assert imported["argv"][4] == "docker://127.0.0.1:5443#faice-test/base:bookworm"  # enroot's registry#image
    credentials = Path(imported["env"]["ENROOT_CONFIG_PATH"]) / ".credentials"
    assert not credentials.exists()  # a private file, gone after the import
    (start,) = batch_calls(calls, "start")
    (record,) = records(outdir).values()
    outputs = outdir.resolve() / "batches" / record["batchId"] / "outputs"
    staged = record["inputs"]["data"]["hostPath"]
    cache = tmp_path / "cache" / "enroot"
    assert start["argv"] == [
        "enroot", "start", "--rc", str(cache / "faice-rc.sh"),
        "--mount", f"{outputs}:/cc/outputs:none:x-create=auto,rbind,rw",
        "--mount", f"{staged}:/cc/inputs/data/data.txt:none:x-create=auto,rbind,ro",
        "--env", "CUDA_VISIBLE_DEVICES", "--env", "FAICE_TEST_SECRET_VALUE", "--env", "FAICE_WORKDIR",
        "--env", "NVIDIA_VISIBLE_DEVICES",
        str(cache / "127.0.0.1_5443_faice-test_base_bookworm-4a0a17633380.sqsh"),
        "sh", "-c", record["command"][2], "0", "/cc/inputs/data/data.txt"]
    assert start["env"]["FAICE_TEST_SECRET_VALUE"] == SECRET and SECRET not in " ".join(start["argv"])
    assert start["env"]["NVIDIA_VISIBLE_DEVICES"] == record["gpus"][0]["uuid"]
    assert start["env"]["FAICE_WORKDIR"] == "/cc/outputs"
    assert 'cd "$FAICE_WORKDIR"' in (cache / "faice-rc.sh").read_text()


def test_dry_run_shows_each_batchs_command_with_read_only_inputs_and_gpus_requested(tmp_path, monkeypatch):
    monkeypatch.setenv("FAICE_IMAGE_CACHE", str(tmp_path / "cache"))
    red = gpu_red(tmp_path, batches=2)
    for runtime, gpu_flag in (("apptainer", "--nv"), ("enroot", "NVIDIA_VISIBLE_DEVICES")):
        result = faice("exec", str(red), "--runtime", runtime, "--dry-run", "--json",
                       env={"FAICE_GPU_INVENTORY": json.dumps(GPUS)})
        assert result.returncode == 0, result.stderr
        plan = json.loads(result.stdout)
        assert plan["runtime"] == runtime
        commands = [b["runtimeCommand"] for b in plan["batches"]]
        assert len(commands) == 2
        for command in commands:
            assert command[:2] == [runtime, "exec" if runtime == "apptainer" else "start"]
            joined = " ".join(command)
            assert ":/cc/inputs/data/data.txt:ro" in joined or ":/cc/inputs/data/data.txt:none:x-create=auto,rbind,ro" in joined
            assert gpu_flag in command
        shown = [b["runtimeEnvironment"] for b in plan["batches"]]
        gpu_variable = "APPTAINERENV_NVIDIA_VISIBLE_DEVICES" if runtime == "apptainer" else "NVIDIA_VISIBLE_DEVICES"
        assert [s[gpu_variable] for s in shown] == ["GPU-aaa", "GPU-bbb"]  # exclusive devices
        assert not (tmp_path / "cache").exists()  # a dry run writes nothing
    text = faice("exec", str(red), "--runtime", "apptainer", "--dry-run", env={"FAICE_GPU_INVENTORY": json.dumps(GPUS)})
    assert "  runtime:    apptainer exec --containall" in text.stdout


def test_concurrent_first_use_pulls_once_and_never_leaves_a_partial_sif(stand_in, tmp_path):
    from faice.runtime.apptainer import ApptainerRuntime

    runtime = ApptainerRuntime(cache=tmp_path / "shared-cache")
    ref = "127.0.0.1:5443/faice-test/base:bookworm"
    with ThreadPoolExecutor(8) as pool:  # the lock is a host-wide flock: threads contend like processes
        results = list(pool.map(lambda _: runtime.ensure_image(ref), range(8)))
    assert sum(pulled for _info, pulled in results) == 1
    assert len({info.id for info, _ in results}) == 1
    assert len(batch_calls(stand_in(), "pull")) == 1
    assert sorted(p.name for p in (tmp_path / "shared-cache").iterdir()) == [
        "127.0.0.1_5443_faice-test_base_bookworm-4a0a17633380.sif", "locks"]


def test_the_runtimes_own_failure_is_an_engine_failure_not_the_commands(stand_in, tmp_path):
    (tmp_path / "stand-in-exit").write_text("255")  # apptainer's own failures exit 255
    red = gpu_red(tmp_path, engine="apptainer", batches=1)
    outdir = tmp_path / "run"
    result = faice("exec", str(red), "--outdir", str(outdir), "--no-progress")
    assert result.returncode == 1
    (record,) = records(outdir).values()
    assert record["failureClass"] == "engine"
    (tmp_path / "stand-in-exit").write_text("3")
    outdir = tmp_path / "run3"
    faice("exec", str(red), "--outdir", str(outdir), "--no-progress")
    (record,) = records(outdir).values()
    assert (record["failureClass"], record["process"]["returnCode"]) == ("exit-code", 3)


# ---------------------------------------------------------------- Pyxis (srun --container-image)
# Pyxis's contract: its README's option list and args.c (mounts SRC:DST[:FLAGS] joined by ",",
# --container-env NAME[,NAME…] with the values from srun's own environment).

def test_pyxis_runs_each_batch_as_a_job_step_with_the_imported_image_mounts_workdir_and_env_names(stand_in, tmp_path):
    red = gpu_red(tmp_path, engine="pyxis", batches=2)
    data = json.loads(red.read_text())
    data["container"]["settings"]["ram"] = 256
    red.write_text(json.dumps(data))
    outdir = tmp_path / "run"
    result = faice("exec", str(red), "--outdir", str(outdir), "--no-progress",
                   "--preserve-environment", "FAICE_TEST_SECRET_VALUE",
                   env={"SLURM_JOB_ID": "4242", "PYXIS_CONTAINER_MOUNTS": "/:/host"})
    assert result.returncode == 0, result.stderr[-2000:]
    calls = stand_in()
    (imported,) = batch_calls(calls, "import")  # once, by Enroot, into the cache Enroot's runtime shares
    cache = tmp_path / "cache" / "enroot"
    image = cache / "127.0.0.1_5443_faice-test_base_bookworm-4a0a17633380.sqsh"
    assert imported["argv"][:3] == ["enroot", "import", "--output"]
    steps = sorted((c for c in calls if c["argv"][0] == "srun"), key=lambda c: c["argv"][-2])
    assert len(steps) == 2
    found = records(outdir)
    for index, step in enumerate(steps):
        record = found[index]
        outputs = outdir.resolve() / "batches" / record["batchId"] / "outputs"
        staged = record["inputs"]["data"]["hostPath"]
        name = step["argv"][6].removeprefix("--job-name=")
        assert name.startswith(f"faice-{record['batchId']}-")
        assert step["argv"] == [  # the golden argv
            "srun", "--ntasks=1", "--nodes=1", "--overlap", "--export=ALL", "--unbuffered", f"--job-name={name}",
            "--mem=256M", f"--container-image={image}",
            f"--container-mounts={outputs}:/cc/outputs:rw,{staged}:/cc/inputs/data/data.txt:ro",
            "--container-workdir=/cc/outputs", "--no-container-mount-home",
            "--container-env=CUDA_VISIBLE_DEVICES,FAICE_TEST_SECRET_VALUE,NVIDIA_VISIBLE_DEVICES",
            "--", "sh", "-c", record["command"][2], str(index), "/cc/inputs/data/data.txt"]
        env = step["env"]
        assert env["FAICE_TEST_SECRET_VALUE"] == SECRET and SECRET not in " ".join(step["argv"])
        assert env["SLURM_JOB_ID"] == "4242"  # a step of the job faice runs in
        assert "PYXIS_CONTAINER_MOUNTS" not in env  # Pyxis reads PYXIS_* as its options: never passed on
        assert env["NVIDIA_VISIBLE_DEVICES"] == record["gpus"][0]["uuid"] and env["CUDA_VISIBLE_DEVICES"] == "0"
        assert (outputs / "result.txt").read_text() == "from the stand-in\n"
        assert (outdir / "batches" / record["batchId"] / "stdout.txt").read_text() == "srun stand-in ran the batch\n"
    assert {found[0]["gpus"][0]["uuid"], found[1]["gpus"][0]["uuid"]} == {"GPU-aaa", "GPU-bbb"}


def test_pyxis_tells_slurms_oom_kill_and_exit_codes_and_refuses_to_run_outside_a_job(stand_in, tmp_path):
    red = gpu_red(tmp_path, engine="pyxis", batches=1)
    (tmp_path / "stand-in-exit").write_text("137")
    (tmp_path / "stand-in-stderr").write_text(
        "slurmstepd: error: Detected 1 oom_kill event in StepId=4242.0. Some of the step tasks have been OOM Killed.\n"
        "srun: error: node1: task 0: Out Of Memory")
    faice("exec", str(red), "--outdir", str(tmp_path / "oom"), "--no-progress", env={"SLURM_JOB_ID": "4242"})
    (record,) = records(tmp_path / "oom").values()
    assert record["failureClass"] == "oom", record["message"]
    (tmp_path / "stand-in-stderr").unlink()
    (tmp_path / "stand-in-exit").write_text("3")
    faice("exec", str(red), "--outdir", str(tmp_path / "exit3"), "--no-progress", env={"SLURM_JOB_ID": "4242"})
    (record,) = records(tmp_path / "exit3").values()
    assert (record["failureClass"], record["process"]["returnCode"]) == ("exit-code", 3)
    result = faice("exec", str(red), "--outdir", str(tmp_path / "outside"), "--no-progress", env={"SLURM_JOB_ID": ""})
    (record,) = records(tmp_path / "outside").values()
    assert record["failureClass"] == "engine" and "job step" in record["message"]
    assert result.returncode == 1


def test_pyxis_dry_run_shows_the_srun_command_of_each_batch(tmp_path, monkeypatch):
    monkeypatch.setenv("FAICE_IMAGE_CACHE", str(tmp_path / "cache"))
    red = gpu_red(tmp_path, batches=2)
    result = faice("exec", str(red), "--runtime", "pyxis", "--dry-run", "--json",
                   env={"FAICE_GPU_INVENTORY": json.dumps(GPUS)})
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["runtime"] == "pyxis" and plan["ramNote"] is None
    for batch, uuid in zip(plan["batches"], ["GPU-aaa", "GPU-bbb"], strict=True):
        command = batch["runtimeCommand"]
        assert command[:2] == ["srun", "--ntasks=1"]
        mounts = next(a for a in command if a.startswith("--container-mounts="))
        assert mounts.endswith(":/cc/inputs/data/data.txt:ro")
        assert "--container-env=CUDA_VISIBLE_DEVICES,NVIDIA_VISIBLE_DEVICES" in command
        assert command[command.index("--") + 1:][:2] == ["sh", "-c"]
        assert batch["runtimeEnvironment"]["NVIDIA_VISIBLE_DEVICES"] == uuid  # exclusive devices
    assert not (tmp_path / "cache").exists()  # a dry run writes nothing
    text = faice("exec", str(red), "--runtime", "pyxis", "--dry-run", env={"FAICE_GPU_INVENTORY": json.dumps(GPUS)})
    assert "  runtime:    srun --ntasks=1 --nodes=1 --overlap" in text.stdout


@pytest.mark.slow
@pytest.mark.slurm
def test_pyxis_under_the_slurm_engine_runs_each_batch_as_a_step_of_its_task(stand_in, slurm, tmp_path):
    """The Slurm engine for real (sbatch, the task on the node); the step's srun is the stand-in."""
    red = gpu_red(tmp_path, engine="pyxis", batches=2)
    data = json.loads(red.read_text())
    del data["container"]["settings"]["gpus"]  # no GPU in this Slurm
    data["execution"] = {"engine": "slurm", "settings": {"partition": slurm.partition}}
    red.write_text(json.dumps(data))
    outdir = tmp_path / "run"
    found = submit_and_wait(red, outdir)
    assert [found[i][0] for i in range(2)] == ["succeeded"] * 2, found
    steps = [c for c in stand_in() if c["argv"][0] == "srun"]
    assert len(steps) == 2
    jobs = {r["engine"]["jobId"] for r in records(outdir).values()}
    assert all(s["env"].get("SLURM_ARRAY_JOB_ID") in jobs for s in steps)  # inside the batch's own job
