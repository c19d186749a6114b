"""Slurm engine logic that needs no cluster: settings, sbatch options, task ids, GPU mapping."""

from __future__ import annotations

from pathlib import Path

import pytest

from faice.engines.slurm.client import array_spec, parse_task_ids
from faice.engines.slurm.settings import SlurmSettings, gpu_count, sbatch_options
from faice.engines.slurm.task import docker_gpu_ids
from faice.errors import ValidationError
from faice.red.experiment import Experiment


def experiment(settings, container_settings=None) -> Experiment:
    data = {
        "redVersion": "9",
        "cli": {},
        "container": {"engine": "docker", "settings": {"image": {"url": "x"}, **(container_settings or {})}},
        "execution": {"engine": "slurm", "settings": settings},
    }
    return Experiment("sweep.red.yml", data, [])


def test_settings_become_sbatch_options_with_memory_and_gpus():
    settings = SlurmSettings.from_experiment(
        experiment({"partition": "gpu", "account": "proj", "qos": "high", "time": "01:00:00",
                    "cpusPerTask": 4, "extraArgs": ["--constraint=a100"]})
    )
    options = sbatch_options(
        settings, {"ram": 2048, "gpus": {"vendor": "nvidia", "count": 2}},
        job_name="faice-r", array="0-3%2", output="/o/slurm-%A_%a.out", workdir="/o",
    )
    for expected in ("--partition=gpu", "--account=proj", "--qos=high", "--time=01:00:00",
                     "--cpus-per-task=4", "--mem=2048M", "--gres=gpu:2", "--array=0-3%2",
                     "--output=/o/slurm-%A_%a.out", "--no-requeue"):
        assert expected in options
    assert options[-1] == "--constraint=a100"  # extra args last, so they can override


def test_gpu_devices_become_a_gres_count_and_no_ram_means_no_mem():
    assert gpu_count({"gpus": {"vendor": "nvidia", "devices": [{"vramMin": 8000}, {"vramMin": 8000}]}}) == 2
    assert gpu_count({}) == 0
    settings = SlurmSettings.from_experiment(experiment({"batchConcurrencyLimit": 3}))
    assert settings.max_running == 3
    options = sbatch_options(settings, {"gpus": {"vendor": "nvidia", "devices": [{"vramMin": 1024}]}},
                             job_name="j", array="0", output="o", workdir="w")
    assert "--gres=gpu:1" in options and not any(o.startswith("--mem") for o in options)


def test_bad_settings_name_every_key_path():
    with pytest.raises(ValidationError) as info:
        SlurmSettings.from_experiment(
            experiment({"partiton": "gpu", "cpusPerTask": 0, "extraArgs": "--exclusive", "batchConcurrencyLimit": True})
        )
    text = str(info.value)
    assert "sweep.red.yml" in text
    for path in ("execution.settings.partiton", "execution.settings.cpusPerTask",
                 "execution.settings.extraArgs", "execution.settings.batchConcurrencyLimit"):
        assert path in text


def test_task_id_lists_and_array_spec():
    assert parse_task_ids("3") == [3]
    assert parse_task_ids("[0-2,5]%2") == [0, 1, 2, 5]
    assert parse_task_ids("4-5") == [4, 5]
    assert parse_task_ids("N/A") == []
    assert array_spec(1) == "0"
    assert array_spec(4, 2) == "0-3%2"


def test_slurm_gpus_map_to_host_docker_ids():
    """No GPU exists here: this checks the id mapping only. With cgroup-confined devices Slurm
    renumbers CUDA_VISIBLE_DEVICES from 0, but Docker needs the node's ids (SLURM_JOB_GPUS)."""
    assert docker_gpu_ids({"SLURM_JOB_GPUS": "2,3", "CUDA_VISIBLE_DEVICES": "0,1"}) == "2,3"
    assert docker_gpu_ids({"CUDA_VISIBLE_DEVICES": "1"}) == "1"
    assert docker_gpu_ids({}) is None


EXAMPLE = str(Path(__file__).resolve().parents[3] / "examples" / "slurm" / "sweep.red.yml")


def test_dry_run_prints_the_sbatch_command_and_submits_nothing(tmp_path, capsys):
    from faice.cli import main

    outdir = tmp_path / "run"
    assert main(["exec", EXAMPLE, "--dry-run", "--outdir", str(outdir), "--parallel", "2"]) == 0
    out = capsys.readouterr().out
    assert "--array=0-3%2" in out and "--mem=256M" in out and "--partition=debug" in out
    assert out.count("task ") == 4 and '{"n": 4}' in out
    assert not outdir.exists()


def test_without_slurm_tools_exec_fails_with_a_clear_message(tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "PATH": str(tmp_path)}  # no sbatch on PATH
    result = subprocess.run([sys.executable, "-m", "faice", "exec", EXAMPLE, "--outdir", str(tmp_path / "run")],
                            capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 1
    assert "sbatch not found on PATH" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()  # checked before anything is written


def test_packed_workers_are_sized_for_the_batches_they_run_at_once():
    settings = SlurmSettings.from_experiment(
        experiment({"workers": 3, "batchesPerWorker": 2, "cpusPerTask": 4, "leaseSeconds": 30, "pollInterval": 2}))
    assert (settings.workers, settings.batches_per_worker, settings.lease_seconds, settings.poll_interval) == \
        (3, 2, 30.0, 2.0)
    options = sbatch_options(settings, {"ram": 1000, "gpus": {"vendor": "nvidia", "count": 1}},
                             job_name="j", array="0-2", output="o", workdir="w", batches_per_task=2)
    assert {"--cpus-per-task=8", "--mem=2000M", "--gres=gpu:2", "--array=0-2"} <= set(options)
    unpacked = SlurmSettings.from_experiment(experiment({}))
    assert not unpacked.packed and unpacked.poll_interval == 10.0  # absent: one task per batch


def test_bad_packing_settings_name_their_key_path():
    with pytest.raises(ValidationError) as caught:
        SlurmSettings.from_experiment(experiment({"workers": 0, "leaseSeconds": 1, "pollInterval": "fast"}))
    text = str(caught.value)
    for key in ("execution.settings.workers", "execution.settings.leaseSeconds", "execution.settings.pollInterval"):
        assert key in text
    with pytest.raises(ValidationError, match="set workers too"):
        SlurmSettings.from_experiment(experiment({"batchesPerWorker": 2}))
