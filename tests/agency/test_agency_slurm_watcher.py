"""The agency's Slurm runners on the process's one watcher and the batch-submission hook: the
server's dispatcher, store, vault and runners run in this process against the real
single-node Slurm cluster (whose node is this machine, with its Docker engine)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import agency_reds as reds
import pytest
from slurm_helpers import wait_for

from faice.agency.db import Database
from faice.agency.dispatcher import Dispatcher
from faice.agency.options import SlurmFlags
from faice.agency.slurm_pack import PackedSlurmRunner
from faice.agency.slurm_runner import SlurmRunner, SlurmServerSettings
from faice.agency.store import FINAL_STATES, Store
from faice.agency.submit import build_documents
from faice.agency.vault import Vault, load_or_create_key

pytestmark = [pytest.mark.slurm, pytest.mark.docker]


def logged_calls(bin_dir: Path, tools: tuple[str, ...], monkeypatch) -> Path:
    """Wrappers of Slurm's tools first on PATH (this process's and the tasks' it submits)
    that log each call."""
    bin_dir.mkdir()
    calls = bin_dir / "calls.log"
    for tool in tools:
        real = next(Path(d) / tool for d in os.environ["PATH"].split(os.pathsep) if (Path(d) / tool).is_file())
        wrapper = bin_dir / tool
        wrapper.write_text(f'#!/bin/sh\necho {tool} >> "{calls}"\nexec {real} "$@"\n')
        wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return calls


def serve(tmp_path: Path, runner) -> tuple[Store, Vault, Dispatcher]:
    db = Database(f"sqlite:///{tmp_path}/agency.db")
    store = Store(db)
    vault = Vault(db, load_or_create_key(str(tmp_path / "key")))
    return store, vault, Dispatcher(store, vault, runner, tmp_path / "work", parallel=64)


def submit(store: Store, vault: Vault, red: dict) -> list[str]:
    experiment, batches = build_documents(red, "alice", vault, disable_retry=True, disable_connector_validation=True)
    store.insert_experiment(experiment, batches, user="alice")
    return [b["_id"] for b in batches]


def final(store: Store, ids: list[str], timeout: float) -> list[dict]:
    return wait_for(lambda: (batches := [store.batch(i) for i in ids]) and
                    all(b["state"] in FINAL_STATES for b in batches) and batches, timeout, "batches not final")


def test_one_squeue_per_round_for_every_batch_the_server_follows(slurm, test_image, tmp_path, monkeypatch):
    """Five batches, each its own Slurm job, followed together: one squeue call per poll
    round for all of them (not one squeue and one scontrol per batch and second)."""
    calls = logged_calls(tmp_path / "bin", ("squeue", "scontrol"), monkeypatch)
    settings = SlurmServerSettings.from_flags(SlurmFlags(partition=slurm.partition, time="00:05:00"))
    store, vault, dispatcher = serve(tmp_path, SlurmRunner(settings, tmp_path / "work"))  # polls once a second
    ids = submit(store, vault, reds.multi_batch(["4"] * 5, command="sleep"))
    started = time.monotonic()
    dispatcher.start()
    try:
        batches = final(store, ids, 180)
    finally:
        dispatcher.stop()
    elapsed = time.monotonic() - started
    assert [b["state"] for b in batches] == ["succeeded"] * 5, [b["history"][-1] for b in batches]
    queries = calls.read_text().split()
    assert elapsed > 4  # the batches were followed together for seconds
    assert 1 <= queries.count("squeue") <= elapsed + 2, (queries.count("squeue"), elapsed)
    # scontrol only for a job whose task has left the queue (its exit status), not every round
    assert queries.count("scontrol") <= 2 * len(ids), queries.count("scontrol")


class Recording(PackedSlurmRunner):
    """The real packed runner; it notes how many batches each submit_many call hands it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls: list[int] = []

    def submit_many(self, jobs):
        self.calls.append(len(jobs))
        return super().submit_many(jobs)


def test_batches_started_together_are_one_packed_submission_at_once(slurm, test_image, tmp_path, monkeypatch):
    """The dispatcher hands the batches it starts in one round to the packed runner in one
    call: one sbatch for all of them, submitted without waiting for stragglers."""
    calls = logged_calls(tmp_path / "bin", ("sbatch",), monkeypatch)
    settings = SlurmServerSettings.from_flags(SlurmFlags(partition=slurm.partition, time="00:05:00", workers=2))
    runner = Recording(settings, tmp_path / "work")
    store, vault, dispatcher = serve(tmp_path, runner)
    values = [f"word{n}" for n in range(12)]
    ids = submit(store, vault, reds.multi_batch(values, command="echo"))
    dispatcher.start()
    try:
        batches = final(store, ids, 180)
    finally:
        dispatcher.stop()
    assert [b["state"] for b in batches] == ["succeeded"] * 12, [b["history"][-1] for b in batches]
    assert [store.log(i, "stdout") for i in ids] == [f"{v}\n" for v in values]
    assert runner.calls == [12]
    assert calls.read_text().split() == ["sbatch"]  # one packed submission
    wait_for(lambda: not list((tmp_path / "work" / "slurm-packs").iterdir()), 60,
             "the pack's directory was left behind")  # once its workers are gone
