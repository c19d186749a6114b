"""The search's log and --resume with the real Optuna, no containers: told trials are replayed
into the new study, an untold one is proposed again with the same batch id."""

from __future__ import annotations

import math

from faice.pipeline.plan import metrics_spec
from faice.pipeline.search import Search, read_log
from faice.red.experiment import Experiment

RED = {
    "redVersion": "9",
    "cli": {"cwlVersion": "v1.0", "class": "CommandLineTool", "baseCommand": ["train"],
            "inputs": {"lr": {"type": "float", "inputBinding": {"prefix": "--lr"}},
                       "bs": {"type": "int", "inputBinding": {"prefix": "--bs"}}}, "outputs": {}},
    "inputs": {"lr": 0.1, "bs": 32},
    "metrics": {"objective": {"name": "acc", "goal": "max"}, "sources": [{"stdout": True}]},
    "container": {"engine": "docker", "settings": {"image": {"url": "x"}}},
    "execution": {"engine": "ccfaice", "settings": {}},
}


def experiment(trials: int, algorithm: str = "tpe") -> Experiment:
    data = {**RED, "sweep": {"search": {"algorithm": algorithm, "trials": trials, "seed": 3, "startupTrials": 2,
                                        "parameters": {"lr": {"loguniform": [1e-4, 1.0]},
                                                       "bs": {"choice": [16, 64, 256]}}}}}
    return Experiment("x.red", data, [])


def search(tmp_path, trials: int, *, resume: bool, algorithm: str = "tpe") -> Search:
    exp = experiment(trials, algorithm)
    metrics = metrics_spec(exp)
    assert metrics is not None
    return Search(exp, metrics, tmp_path, resume=resume)


def score(parameters: dict) -> float:
    return 1 - (math.log10(parameters["lr"]) + 1.5) ** 2 / 4


def test_resume_replays_told_trials_and_proposes_the_untold_one_again(tmp_path):
    first = search(tmp_path, 5, resume=False)
    batches = [first.propose() for _ in range(3)]
    assert all(b is not None for b in batches) and len({b.id for b in batches}) == 3
    first.tell(batches[0].id, "succeeded", score(batches[0].parameters), [[0, 0.1], [1, score(batches[0].parameters)]])
    first.tell(batches[1].id, "stopped", 0.05, [[0, 0.05]], "stopped early by the asha rule at step 0 (…)")
    first.close()  # batches[2] was in flight when the run stopped

    again = search(tmp_path, 6, resume=True)
    assert again.reused == 2 and again.remaining == 4
    assert again.finished_batches() == [batches[0].id, batches[1].id]
    states = [t.state.name for t in again.study.trials]
    assert states == ["COMPLETE", "PRUNED", "WAITING"]  # the told ones replayed, the untold one queued
    assert again.study.trials[1].intermediate_values == {0: 0.05}
    redo = again.propose()
    assert redo is not None and redo.id == batches[2].id and redo.parameters == batches[2].parameters
    header, rows = read_log(tmp_path)
    assert header is not None and header["budget"] == 6
    assert [(r["trial"], r["origin"]) for r in rows] == [(0, "startup"), (1, "startup"), (2, "startup"), (3, "again")]
    assert rows[2]["state"] == "running" and rows[1]["sampler"] == "pruned"
    for _ in range(3):
        assert again.propose() is not None
    assert again.propose() is None, "the budget of 6 is spent: 2 told + 4 proposed now"


def test_every_algorithm_proposes_distinct_points(tmp_path):
    for algorithm in ("tpe", "random", "qmc", "cmaes"):
        run = search(tmp_path / algorithm, 12, resume=False, algorithm=algorithm)
        seen = []
        for _ in range(12):
            batch = run.propose()
            assert batch is not None
            seen.append((batch.parameters["lr"], batch.parameters["bs"]))
            run.tell(batch.id, "succeeded", score(batch.parameters), None)
        assert len(set(seen)) >= 10, (algorithm, seen)
        assert all(1e-4 <= lr <= 1.0 and bs in (16, 64, 256) for lr, bs in seen)
        run.close()
