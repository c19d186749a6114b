"""Charliecloud 0.31 for real: ``ch-image pull`` once per host from the registry (with
credentials), ``ch-run`` unprivileged as the invoking user — as root, as an ordinary user and
inside Slurm jobs — and concurrent first use that never corrupts the cache."""

from __future__ import annotations

import json
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from runtime_helpers import (
    faice,
    faice_as_user,
    observable,
    oom_sweep,
    ordinary_home,
    records,
    submit_and_wait,
    sweep_red,
)

pytestmark = [pytest.mark.slow]


def test_three_concurrent_runs_of_eight_batches_fetch_and_convert_the_image_once(registry, charliecloud,
                                                                                 image_cache, tmp_path):
    since = registry.log_offset()
    red = sweep_red(tmp_path / "sweep.red.json", registry)
    runs = [tmp_path / f"run{i}" for i in range(3)]
    with ThreadPoolExecutor(3) as pool:  # three faice processes, all finding an empty cache
        results = list(pool.map(lambda out: faice("exec", str(red), "--runtime", "charliecloud", "--outdir",
                                                  str(out), "--parallel", "8", "--no-progress"), runs))
    for result in results:
        assert result.returncode == 0, result.stderr[-2000:]
    first = observable(runs[0])
    assert len(first) == 8 and first[5] == ("succeeded", None, 0, "batch 5 of the staged input\n", "value=35\n")
    assert observable(runs[1]) == first and observable(runs[2]) == first
    fetched = registry.blob_fetches(since, "python-requests")  # ch-image's own requests
    assert fetched and set(fetched.values()) == {1}, fetched
    images = list((image_cache / "charliecloud" / "storage" / "img").iterdir())
    assert len(images) == 1 and (images[0] / "cc").is_dir()


def test_batches_run_as_the_invoking_ordinary_user_who_owns_the_cache_and_outputs(registry, charliecloud, tmp_path):
    with ordinary_home("ch") as (account, home):
        data = home / "data.txt"
        data.write_text("the staged input\n")
        red = sweep_red(home / "sweep.red.json", registry, batches=3, data=data,
                        script='echo "batch $0 of $(cat /cc/inputs/data/*)"; id -u > result.txt')
        for path in (data, red):
            os.chown(path, account.pw_uid, account.pw_gid)
        result = faice_as_user(home, "exec", str(red), "--runtime", "charliecloud", "--outdir", str(home / "run"),
                               "--no-progress", env={"FAICE_IMAGE_CACHE": str(home / "cache")})
        assert result.returncode == 0, result.stderr[-2000:]
        found = observable(home / "run")
        assert [found[i][0] for i in range(3)] == ["succeeded"] * 3
        assert {found[i][4] for i in range(3)} == {f"{account.pw_uid}\n"}  # the user's own uid inside
        assert (home / "cache" / "charliecloud" / "storage").stat().st_uid == account.pw_uid
        for record in records(home / "run").values():
            result_file = home / "run" / "batches" / record["batchId"] / "outputs" / "result.txt"
            assert result_file.stat().st_uid == account.pw_uid


def test_ram_is_enforced_as_root_and_an_oom_kill_is_classified_oom(registry, charliecloud, image_cache, tmp_path):
    found = oom_sweep(tmp_path, registry, "charliecloud")
    assert found[0]["state"] == "succeeded"
    assert found[1]["failureClass"] == "oom", found[1]["message"]
    assert not list(Path("/sys/fs/cgroup/memory/faice").glob(f"faice-{found[1]['batchId']}*"))


def test_dry_run_says_where_ram_is_not_enforced(registry, charliecloud, image_cache, tmp_path):
    red = sweep_red(tmp_path / "ram.red.json", registry, batches=1, ram=512)
    result = faice("exec", str(red), "--runtime", "charliecloud", "--dry-run", "--json")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["runtime"] == "charliecloud" and plan["ramNote"] is None  # root here: enforced
    (batch,) = plan["batches"]
    assert batch["runtimeCommand"][0] == "ch-run"


@pytest.mark.slurm
def test_sweep_on_slurm_runs_each_batch_with_ch_run_on_the_node(registry, charliecloud, slurm, image_cache, tmp_path):
    red = sweep_red(tmp_path / "slurm.red.json", registry, batches=4, engine="charliecloud",
                    execution={"engine": "slurm", "settings": {"partition": slurm.partition}})
    outdir = tmp_path / "run"
    found = submit_and_wait(red, outdir)
    assert found[2] == ("succeeded", None, 0, "batch 2 of the staged input\n", "value=14\n")
    assert all(found[i][0] == "succeeded" for i in range(4))
    assert (image_cache / "charliecloud" / "storage" / "img").is_dir()


def test_what_a_sigkilled_faice_left_running_is_ended_at_the_next_start(registry, charliecloud, image_cache, tmp_path):
    """``--pdeathsig`` kills the runtime program with faice, not what its command started
    (no PID namespace under ch-run): the next faice start ends the orphaned process group."""
    import signal
    import sys
    import time

    marker = f"{4000 + os.getpid() % 1000}.25"  # a sleep nobody else runs
    red = sweep_red(tmp_path / "slow.red.json", registry, batches=1, script=f"echo started; sleep {marker}; true")
    outdir = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "faice", "exec", str(red), "--runtime", "charliecloud",
                                "--outdir", str(outdir), "--no-progress"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)

    def sleepers() -> list[int]:
        found = []
        for entry in Path("/proc").iterdir():
            try:
                if entry.name.isdigit() and (entry / "cmdline").read_bytes().split(b"\0")[:2] == [b"sleep", marker.encode()]:
                    found.append(int(entry.name))
            except OSError:
                pass
        return found

    deadline = time.monotonic() + 240
    while not sleepers() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert sleepers(), "the batch never started"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    time.sleep(1)
    assert sleepers(), "the orphan is gone already (nothing for the next start to do)"
    again = faice("exec", str(sweep_red(tmp_path / "quick.red.json", registry, batches=1)), "--runtime",
                  "charliecloud", "--outdir", str(tmp_path / "next"), "--no-progress")
    assert again.returncode == 0, again.stderr[-2000:]
    deadline = time.monotonic() + 10
    while sleepers() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not sleepers()
