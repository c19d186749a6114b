"""The sweep budget: ``maxBatches`` (how many in all) and ``maxConcurrent`` (how many at a time)."""

from __future__ import annotations

from sweep_reds import paths, red

from faice.red.sweep import expand_batches, sweep_problems

RANDOM = {"seed": 3, "parameters": {"learning_rate": {"loguniform": [1e-5, 1e-2]}, "batch_size": {"randint": [8, 64]}}}


def test_max_batches_keeps_the_first_combinations_and_growing_it_keeps_their_ids():
    grid = {"grid": {"learning_rate": [0.1, 0.01, 0.001], "batch_size": [8, 16]}}
    all_six = expand_batches(red(sweep=grid), "x.red")
    first_four = expand_batches(red(sweep={**grid, "maxBatches": 4}), "x.red")
    assert [b.parameters for b in first_four] == [b.parameters for b in all_six[:4]]
    assert [b.id for b in first_four] == [b.id for b in all_six[:4]]


def test_random_search_draws_max_batches_samples_and_a_bigger_budget_extends_them():
    five = expand_batches(red(sweep={"random": RANDOM, "maxBatches": 5}), "x.red")
    eight = expand_batches(red(sweep={"random": RANDOM, "maxBatches": 8}), "x.red")
    assert len(five) == 5 and len(eight) == 8
    assert [b.id for b in eight[:5]] == [b.id for b in five]  # --resume runs only the 3 new ones
    capped = expand_batches(red(sweep={"random": {**RANDOM, "samples": 20}, "maxBatches": 2}), "x.red")
    assert [b.id for b in capped] == [b.id for b in five[:2]]


def test_budget_values_are_checked_with_their_key_path():
    problems = sweep_problems(red(sweep={"grid": {"batch_size": [8]}, "maxBatches": 0, "maxConcurrent": "2"}), "x.red")
    assert paths(problems) == ["sweep.maxBatches", "sweep.maxConcurrent"]
    assert all("positive integer" in p.message for p in problems)
    # random without samples needs maxBatches
    assert paths(sweep_problems(red(sweep={"random": RANDOM}), "x.red")) == ["sweep.random.samples"]
