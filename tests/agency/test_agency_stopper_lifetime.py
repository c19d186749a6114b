"""A long-running server keeps an experiment's early-stopping rule (every finished batch's
objective series) only while a batch of it is left to run; the rule is rebuilt from the
series stored in the batch documents should a search add a batch later."""

from __future__ import annotations

import json
from pathlib import Path

import agency_reds as reds
import pytest

from faice.agency.db import Database
from faice.agency.dispatcher import Dispatcher
from faice.agency.store import Store
from faice.agency.submit import build_documents
from faice.agency.vault import Vault, load_or_create_key

METRICS = {"objective": {"name": "acc", "goal": "max"}, "step": "step", "sources": [{"stdout": True}],
           "earlyStopping": {"rule": "asha", "graceSteps": 1, "reductionFactor": 3, "maxSteps": 8}}


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_rule_of_a_finished_experiment_is_dropped_and_rebuilt_from_the_store(backend, request, tmp_path: Path):
    url = f"sqlite:///{tmp_path}/agency.db" if backend == "sqlite" else request.getfixturevalue("postgres_db")
    store = Store(Database(url))
    vault = Vault(store.db, load_or_create_key(str(tmp_path / "key")))
    dispatcher = Dispatcher(store, vault, object(), tmp_path / "work", parallel=2)  # never started
    red = {**reds.minimal(), "metrics": METRICS,
           "batches": [{"inputs": {"some_string": str(n)}, "outputs": {}} for n in range(2)]}
    experiment, batches = build_documents(red, "alice", vault, disable_retry=True, disable_connector_validation=True)
    store.insert_experiment(experiment, batches, user="alice")
    first, second = (b["_id"] for b in batches)

    rule = dispatcher.stopper(experiment)
    assert rule is not None and dispatcher.stopper(experiment) is rule  # one rule per experiment
    store.transition(first, "succeeded", extra={"objectiveSeries": [[1, 0.5], [3, 0.7]]})
    dispatcher._forget_stopper_when_done(experiment["_id"])
    assert dispatcher.stopper(experiment) is rule  # a batch is left to run: kept

    store.transition(second, "failed")
    dispatcher._forget_stopper_when_done(experiment["_id"])
    assert experiment["_id"] not in dispatcher._stoppers  # nothing left to run: dropped

    rebuilt = dispatcher.stopper(experiment)
    assert rebuilt is not None and rebuilt is not rule
    assert rebuilt._series == {first: [[1, 0.5], [3, 0.7]]}  # taught the stored series of the finished batch


def test_the_slurm_runner_shares_the_series_with_the_nodes_while_a_batch_is_in_flight(tmp_path: Path):
    """The series the nodes read (faice.pipeline.stopping.SharedStopper.in_directory) are the
    dispatcher's finished ones plus each batch that ends; they go when the dispatcher forgets
    the experiment, and a new server process starts without a previous one's."""
    from faice.agency.runner import BatchJob, Outcome
    from faice.agency.slurm_runner import SlurmRunner, SlurmServerSettings
    from faice.pipeline.stopping import SharedStopper, Stopper
    from faice.red.metrics import MetricsSpec

    spec = MetricsSpec.from_mapping(METRICS)
    rule = Stopper(spec)
    rule.finished("b1", [[1, 0.5], [3, 0.7]])
    runner = SlurmRunner(SlurmServerSettings({}), tmp_path, watcher=object())  # type: ignore[arg-type]
    job = BatchJob("b2", "e1", 1, 1, {"metrics": METRICS}, tmp_path / "batches" / "b2", stopper=rule)
    directory = runner.share_stopping(job)
    assert directory == str(tmp_path / "slurm-stopping" / "e1")
    node = SharedStopper.in_directory(spec, Path(directory))
    assert node is not None and node.check("b3", [[0, 0.1]]) is None
    assert node.stopper._series["b1"] == [[1, 0.5], [3, 0.7]]  # the dispatcher's finished batch
    runner.forget_experiment("e1")
    assert Path(directory).is_dir()  # b2 is in flight
    runner.shared_outcome(job, Outcome("stopped", extra={"series": {"acc": [[0, 0.2], [1, 0.3]]}}))
    assert json.loads((Path(directory) / "batches" / "b2" / "metrics.json").read_text()) == {
        "series": {"acc": [[0, 0.2], [1, 0.3]]}}
    runner.forget_experiment("e1")
    assert not Path(directory).exists()
    runner.share_stopping(job)  # a batch follows (a search): written again
    assert (Path(directory) / "batches" / "b1" / "metrics.json").exists()
    SlurmRunner(SlurmServerSettings({}), tmp_path, watcher=object())  # type: ignore[arg-type]
    assert not (tmp_path / "slurm-stopping").exists()
