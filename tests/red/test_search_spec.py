"""``sweep.search``: its checks (what does not combine, precise key paths), its batches, and the
hint when Optuna (faice[search]) is missing."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from sweep_reds import assert_messages, paths, red

from faice.red.search import SearchSpec, is_search
from faice.red.sweep import expand_batches, search_batch, sweep_problems, sweep_size

METRICS = {"objective": {"name": "acc", "goal": "max"}, "sources": [{"stdout": True}]}
SEARCH = {"algorithm": "tpe", "trials": 32, "seed": 1,
          "parameters": {"learning_rate": {"loguniform": [1e-5, 1.0]}, "batch_size": {"choice": [16, 64, 256]}}}


def test_a_search_is_valid_and_has_no_batches_up_front():
    data = red(sweep={"search": SEARCH, "maxConcurrent": 4}, metrics=METRICS)
    assert sweep_problems(data, "x.red") == []
    assert is_search(data) and expand_batches(data, "x.red") == [] and sweep_size(data["sweep"]) == 32
    spec = SearchSpec.from_sweep(data["sweep"])
    assert (spec.algorithm, spec.trials, spec.max_concurrent) == ("tpe", 32, 4)
    assert spec.example() == {"learning_rate": 1e-5, "batch_size": 16}


def test_a_trial_batch_has_the_id_a_sweep_batch_of_the_same_values_has():
    data = red(sweep={"search": SEARCH}, metrics=METRICS)
    trial = search_batch(data, 5, {"learning_rate": 0.01, "batch_size": 64})
    grid = expand_batches(red(sweep={"grid": {"learning_rate": [0.01], "batch_size": [64]}}), "x.red")[0]
    assert trial.id == grid.id and trial.index == 5
    assert trial.inputs["learning_rate"] == 0.01 and trial.inputs["batch_size"] == 64


def test_what_does_not_combine_is_named():
    data = red(sweep={"search": SEARCH, "grid": {"optimizer": ["sgd"]}, "random": {"samples": 2, "parameters":
                      {"log": {"choice": ["a"]}}}, "maxBatches": 3}, metrics=METRICS)
    problems = sweep_problems(data, "x.red")
    messages = {".".join(map(str, p.path)): p.message for p in problems}
    assert "grid does not combine with search" in messages["sweep.grid"]
    assert "{choice: [...]}" in messages["sweep.grid"]
    assert "random does not combine with search" in messages["sweep.random"]
    assert "search.trials is the budget" in messages["sweep.maxBatches"]


def test_search_settings_are_checked_with_key_paths():
    bad = {"algorithm": "bayes", "trials": 0, "seed": "x", "startupTrials": -1, "speed": 1,
           "parameters": {"learning_rate": {"loguniform": [0, 1]}, "batch_size": {"choice": [{"a": 1}]}}}
    problems = sweep_problems(red(sweep={"search": bad}), "x.red")
    assert_messages(problems, {
        "sweep.search": "add a metrics section with an objective",
        "sweep.search.algorithm": "expected one of tpe, gp, cmaes, random, qmc, got 'bayes'",
        "sweep.search.trials": "expected an integer from 1",
        "sweep.search.seed": "integer seed",
        "sweep.search.startupTrials": "startupTrials applies to tpe and gp",
        "sweep.search.speed": "unknown key",
        "sweep.search.parameters.learning_rate": "loguniform needs low > 0",
        "sweep.search.parameters.batch_size.choice[0]": "numbers, strings, booleans or null",
    })
    assert problems[0].line is None or problems[0].line >= 1
    missing = sweep_problems(red(sweep={"search": {"parameters": SEARCH["parameters"]}}, metrics=METRICS), "x.red")
    assert paths(missing) == ["sweep.search.trials"]
    # A search value must fit the cli input it sets.
    typed = sweep_problems(red(sweep={"search": {**SEARCH, "parameters": {"batch_size": {"choice": ["big"]}}}},
                               metrics=METRICS), "x.red")
    assert any("does not fit cli input 'batch_size'" in p.message for p in typed)


@pytest.mark.parametrize("seed", [-1, 2**32, 10**50])
def test_a_seed_the_samplers_cannot_take_is_refused(seed):
    """Optuna's samplers take seeds from 0 to 2**32 - 1: -1 passed validate and the run ended in
    'internal error: ValueError: Seed must be between 0 and 2**32 - 1'."""
    problems = sweep_problems(red(sweep={"search": {**SEARCH, "seed": seed}}, metrics=METRICS), "x.red")
    assert_messages(problems, {"sweep.search.seed": "expected an integer seed from 0 to 4,294,967,295"})
    assert not sweep_problems(red(sweep={"search": {**SEARCH, "seed": 2**32 - 1}}, metrics=METRICS), "x.red")


def test_a_missing_optuna_is_a_clear_hint(tmp_path):
    """Optuna is blocked from import in a child process (as on an install without faice[search])."""
    code = ("import sys; sys.modules['optuna'] = None\n"
            "from faice.pipeline.search import require_optuna\n"
            "try:\n    require_optuna('tpe')\nexcept Exception as exc:\n    print(type(exc).__name__, exc)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
    assert out.startswith("UsageError") and "pip install 'faice[search]'" in out


def test_dry_run_of_a_search_on_slurm_says_its_trials_are_proposed_while_it_runs(tmp_path):
    data = red(sweep={"search": SEARCH, "maxConcurrent": 2}, metrics=METRICS)
    data["execution"] = {"engine": "slurm", "settings": {"workers": 3}}
    path = tmp_path / "s.red.json"
    path.write_text(json.dumps(data))
    done = subprocess.run([sys.executable, "-m", "faice", "exec", str(path), "--dry-run", "--json"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    assert plan["batches"] == [] and plan["workers"] == 3
    assert plan["search"]["algorithm"] == "tpe" and plan["search"]["trials"] == 32
    assert plan["search"]["maxConcurrent"] == 2


def test_dry_run_of_a_search_names_its_space_and_image(tmp_path):
    data = red(sweep={"search": SEARCH, "maxConcurrent": 3}, metrics=METRICS)
    path = tmp_path / "s.red.json"
    path.write_text(json.dumps(data))
    done = subprocess.run([sys.executable, "-m", "faice", "exec", str(path), "--dry-run", "--outdir",
                           str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "search: tpe, 32 trials proposed while the run goes (seed 1): learning_rate loguniform" in done.stdout
    assert "parallel: 3" in done.stdout and not (tmp_path / "o").exists()


def test_a_search_is_not_expanded_for_convert(tmp_path):
    """(faice's own agency runs a search's loop itself: tests/engines/agency/test_agency_search.py.)"""
    import pytest

    from faice.errors import FaiceError
    from faice.red.sweep import expanded_red

    data = red(sweep={"search": SEARCH}, metrics=METRICS)
    with pytest.raises(FaiceError, match="sweep.search proposes its batches while it runs"):
        expanded_red(data, "x.red")
    path = tmp_path / "s.red.json"
    path.write_text(json.dumps(data))
    done = subprocess.run([sys.executable, "-m", "faice", "convert", "sweep", str(path)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode != 0 and "no list of batches to send or convert" in done.stderr
    assert "Traceback" not in done.stderr
