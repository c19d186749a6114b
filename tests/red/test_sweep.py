"""Sweep expansion and batch ids: the order users rely on, typed values, stable ids, errors."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from sweep_reds import assert_messages, paths, red

from faice.errors import ValidationError, format_key_path
from faice.red.load import load_mapping, to_plain
from faice.red.sweep import batch_id, expand_batches, expanded_red, sweep_problems

DATA = Path(__file__).resolve().parent.parent / "data" / "sweeps"
LR_SWEEP = DATA / "lr-sweep.red.yml"


# ---------------------------------------------------------------- shapes and order


def test_single_batch_and_batches_forms_give_one_batch_per_item():
    single = expand_batches(red(), "x.red")
    assert [(b.index, b.inputs, b.parameters) for b in single] == [
        (0, {"learning_rate": 0.1, "batch_size": 8, "log": "run.log"}, {})
    ]
    batches_form = red(batches=[{"inputs": {"learning_rate": v, "batch_size": 1, "log": "l"}} for v in (1.0, 2.0)])
    del batches_form["inputs"], batches_form["outputs"]
    expanded = expand_batches(batches_form, "x.red")
    assert [b.inputs["learning_rate"] for b in expanded] == [1.0, 2.0]
    assert [b.outputs for b in expanded] == [{}, {}]


def test_grid_is_a_cartesian_product_with_the_first_key_slowest():
    data = red(sweep={"grid": {"learning_rate": [0.1, 0.2], "batch_size": [16, 32, 64]}})
    batches = expand_batches(data, "x.red")
    assert [(b.inputs["learning_rate"], b.inputs["batch_size"]) for b in batches] == [
        (0.1, 16), (0.1, 32), (0.1, 64), (0.2, 16), (0.2, 32), (0.2, 64)
    ]
    assert [b.index for b in batches] == list(range(6))
    assert batches[4].parameters == {"learning_rate": 0.2, "batch_size": 32}


def test_zip_advances_in_lock_step_and_combines_with_grid_as_product():
    data = red(sweep={
        "grid": {"optimizer": ["adam", "sgd"]},
        "zip": {"learning_rate": [0.1, 0.2, 0.3], "batch_size": [1, 2, 3]},
    })
    batches = expand_batches(data, "x.red")
    assert [(b.inputs["optimizer"], b.inputs["learning_rate"], b.inputs["batch_size"]) for b in batches] == [
        ("adam", 0.1, 1), ("adam", 0.2, 2), ("adam", 0.3, 3),
        ("sgd", 0.1, 1), ("sgd", 0.2, 2), ("sgd", 0.3, 3),
    ]


def test_random_is_reproducible_with_its_seed_and_differs_with_another():
    def sweep(seed):
        return red(sweep={"random": {"samples": 5, "seed": seed, "parameters": {
            "learning_rate": {"loguniform": [1e-5, 1e-2]},
            "batch_size": {"randint": [8, 64]},
            "optimizer": {"choice": ["adam", "sgd", "rmsprop"]},
        }}})

    first = [b.parameters for b in expand_batches(sweep(42), "x.red")]
    again = [b.parameters for b in expand_batches(sweep(42), "x.red")]
    other = [b.parameters for b in expand_batches(sweep(7), "x.red")]
    assert first == again
    assert first != other
    assert len(first) == 5
    for values in first:
        assert 1e-5 <= values["learning_rate"] <= 1e-2
        assert 8 <= values["batch_size"] <= 64 and isinstance(values["batch_size"], int)
        assert values["optimizer"] in ("adam", "sgd", "rmsprop")
    # the samples are spread, not one value repeated
    assert len({v["learning_rate"] for v in first}) == 5


def test_random_uniform_stays_in_range_and_combines_with_grid():
    data = red(sweep={
        "grid": {"batch_size": [1, 2]},
        "random": {"samples": 3, "seed": 1, "parameters": {"learning_rate": {"uniform": [0.1, 0.5]}}},
    })
    batches = expand_batches(data, "x.red")
    assert [b.inputs["batch_size"] for b in batches] == [1, 1, 1, 2, 2, 2]
    rates = [b.inputs["learning_rate"] for b in batches]
    assert rates[:3] == rates[3:]  # the same samples for every grid point
    assert all(0.1 <= r <= 0.5 for r in rates)


def test_sweep_index_and_values_are_substituted_anywhere_in_the_template():
    connector = {"command": "red-connector-ssh", "access": {
        "host": "{{host}}", "port": 22, "auth": {"username": "u", "password": "{{pw}}"},
        "filePath": "/results/$(sweep.index)/weights_lr$(sweep.learning_rate)_$(sweep.tag).h5",
    }}
    data = red(
        sweep={"grid": {"learning_rate": [0.0001, 0.5]}, "zip": {"tag": ["a"]}},
        inputs={"learning_rate": 1.0, "batch_size": 8, "log": "train_$(sweep.index).log"},
        outputs={"weights": {"class": "File", "connector": connector}},
    )
    batches = expand_batches(data, "x.red")
    assert [b.inputs["log"] for b in batches] == ["train_0.log", "train_1.log"]
    assert [b.outputs["weights"]["connector"]["access"]["filePath"] for b in batches] == [
        "/results/0/weights_lr0.0001_a.h5",
        "/results/1/weights_lr0.5_a.h5",
    ]
    # variables are left alone (filled later), and the template itself is not modified
    assert batches[0].outputs["weights"]["connector"]["access"]["host"] == "{{host}}"
    assert data["inputs"]["log"] == "train_$(sweep.index).log"


def test_a_string_that_is_exactly_one_reference_becomes_the_typed_value():
    data = red(
        sweep={"zip": {"size": [32, 64], "rate": [0.5, 1e-05], "flag": [True, False]}},
        inputs={"learning_rate": "$(sweep.rate)", "batch_size": "$(sweep.size)", "log": "s$(sweep.size)_r$(sweep.rate)_$(sweep.flag)"},
    )
    batches = expand_batches(data, "x.red")
    assert [b.inputs["batch_size"] for b in batches] == [32, 64]
    assert all(type(b.inputs["batch_size"]) is int for b in batches)
    assert [b.inputs["learning_rate"] for b in batches] == [0.5, 1e-05]
    assert [b.inputs["log"] for b in batches] == ["s32_r0.5_True", "s64_r1e-05_False"]


# ---------------------------------------------------------------- ids


def test_ids_are_stable_content_derived_and_distinct():
    data = to_plain(load_mapping(str(LR_SWEEP)).data)
    first = [b.id for b in expand_batches(data, "a")]
    second = [b.id for b in expand_batches(to_plain(load_mapping(str(LR_SWEEP)).data), "b")]
    assert first == second
    assert len(set(first)) == len(first) == 8
    assert all(i.startswith("b-") and len(i) >= 14 for i in first)


def test_changing_one_value_changes_exactly_that_batchs_id():
    data = red(batches=[{"inputs": {"learning_rate": v, "batch_size": 1, "log": "l"}, "outputs": {}} for v in (1.0, 2.0, 3.0)])
    del data["inputs"], data["outputs"]
    before = [b.id for b in expand_batches(data, "x")]
    changed = copy.deepcopy(data)
    changed["batches"][1]["inputs"]["learning_rate"] = 2.5
    after = [b.id for b in expand_batches(changed, "x")]
    assert [a == b for a, b in zip(before, after, strict=True)] == [True, False, True]
    # reordering batches keeps each batch's id (resume never mixes runs)
    changed["batches"].reverse()
    assert [b.id for b in expand_batches(changed, "x")] == list(reversed(after))


def test_ids_change_with_the_image_and_the_cli():
    base = [b.id for b in expand_batches(red(), "x")]
    image = red()
    image["container"]["settings"]["image"]["url"] = "python:3.13"
    cli = red()
    cli["cli"]["baseCommand"] = "train2"
    assert [b.id for b in expand_batches(image, "x")] != base
    assert [b.id for b in expand_batches(cli, "x")] != base


def test_ids_are_computed_on_unfilled_variables_so_secrets_never_influence_them():
    data = red(outputs={"w": {"class": "File", "connector": {"command": "ssh", "access": {"auth": {"password": "{{pw}}"}}}}})
    ids = [b.id for b in expand_batches(data, "x")]
    filled_a = copy.deepcopy(data)
    filled_a["outputs"]["w"]["connector"]["access"]["auth"]["password"] = "secret-one"
    # the id of the unfilled document does not depend on any value the variable will get
    assert batch_id(data, data["inputs"], data["outputs"], {}) == ids[0]
    assert batch_id(filled_a, filled_a["inputs"], filled_a["outputs"], {}) != ids[0]


def _docs_example(**changes) -> dict:
    """The sweep example of docs/red-reference.md (index-named log file), with changes."""
    sweep = {
        "grid": {"learning_rate": [0.0001, 0.001], "batch_size": [32, 64]},
        "zip": {"seed": [1, 2], "run_name": ["a", "b"]},
        "random": {"samples": 4, "seed": 42, "parameters": {
            "dropout": {"uniform": [0.1, 0.5]}, "weight_decay": {"loguniform": [1.0e-6, 1.0e-3]},
            "layers": {"randint": [2, 6]}, "optimizer": {"choice": ["adam", "sgd"]}}},
    }
    for key, value in changes.items():
        section, _, name = key.partition("__")
        sweep[section][name] = value
    data = red(sweep=sweep, inputs={"learning_rate": 0.001, "batch_size": 8, "log": "train_$(sweep.index).log"})
    for name in ("seed", "run_name", "dropout", "weight_decay", "layers"):
        data["cli"]["inputs"][name] = {"type": "string?" if name == "run_name" else "float?",
                                       "inputBinding": {"prefix": f"--{name}"}}
    data["cli"]["inputs"]["seed"]["type"] = data["cli"]["inputs"]["layers"]["type"] = "int?"
    return data


@pytest.mark.parametrize("growth", [{"random__samples": 8}, {"grid__batch_size": [32, 64, 128]},
                                    {"grid__learning_rate": [0.0001, 0.001, 0.01]}])
def test_a_grown_sweep_keeps_every_batch_its_id_and_index(growth):
    """Growing any axis of the docs' example (with $(sweep.index) in the template) keeps each
    old batch's id, so --resume reuses it; with the indexes its run recorded, each keeps its
    index and index-named file too, and the new batches are numbered after them."""
    first = expand_batches(_docs_example(), "x")
    assert len(first) == 32 and len({b.inputs["log"] for b in first}) == 32
    recorded = {b.id: b.index for b in first}
    grown_fresh = expand_batches(_docs_example(**growth), "x")
    assert recorded.keys() <= {b.id for b in grown_fresh}, "no old batch runs again"
    grown = expand_batches(_docs_example(**growth), "x", indexes=recorded)
    by_id = {b.id: b for b in grown}
    assert {b.id: by_id[b.id].index for b in first} == recorded
    assert {b.id: by_id[b.id].inputs["log"] for b in first} == {b.id: b.inputs["log"] for b in first}
    assert [b.index for b in grown] == list(range(len(grown)))  # new ones right after, in order
    assert len({b.inputs["log"] for b in grown}) == len(grown), "no new batch takes an old one's file"
    new = [b for b in grown if b.id not in recorded]
    assert new and all(b.inputs["log"] == f"train_{b.index}.log" and b.index >= 32 for b in new)


def test_recorded_indexes_that_collide_or_are_not_numbers_are_renumbered():
    first = expand_batches(_docs_example(), "x")
    bad = {first[0].id: 5, first[1].id: 5, first[2].id: "7", first[3].id: -1}
    batches = {b.id: b for b in expand_batches(_docs_example(), "x", indexes=bad)}
    assert len({b.index for b in batches.values()}) == 32, "every batch its own index"
    assert batches[first[0].id].index == 5 and batches[first[1].id].index > 5
    assert all(b.inputs["log"] == f"train_{b.index}.log" for b in batches.values())


def test_identical_batches_get_distinct_ids_by_occurrence():
    item = {"inputs": {"learning_rate": 1.0, "batch_size": 1, "log": "l"}, "outputs": {}}
    data = red(batches=[item, item, item])
    del data["inputs"], data["outputs"]
    ids = [b.id for b in expand_batches(data, "x")]
    assert ids[1] == ids[0] + "-1" and ids[2] == ids[0] + "-2"


# ---------------------------------------------------------------- expanded RED


def test_expanded_red_is_plain_red_with_explicit_batches():
    data = red(sweep={"grid": {"batch_size": [1, 2]}}, cloud={"enable": True, "mountDir": "/m"}, doc="d")
    expanded = expanded_red(data, "x")
    assert "sweep" not in expanded and "inputs" not in expanded and "outputs" not in expanded and "cloud" not in expanded
    assert expanded["doc"] == "d"
    assert [b["inputs"]["batch_size"] for b in expanded["batches"]] == [1, 2]
    assert all(b["outputs"] == {} and b["cloud"] == {"enable": True, "mountDir": "/m"} for b in expanded["batches"])
    assert "sweep" in data  # the input is untouched
    plain = red()
    assert expanded_red(plain, "x") == plain


# ---------------------------------------------------------------- problems


def test_problems_name_the_key_path_and_what_was_expected():
    data = red(
        sweep={
            "grid": {"learning_rate": [], "batch_size": [1, 2]},
            "zip": {"batch_size": [1], "optimizer": ["a", "b", "c"], "log": ["x", "y"]},
            "random": {"samples": 0, "parameters": {
                "lr": {"uniform": [0.5, 0.1]},
                "decay": {"loguniform": [0, 1]},
                "beta": {"gamma": [1, 2]},
            }},
            "bogus": 1,
        },
        inputs={"learning_rate": 0.1, "batch_size": 8, "log": "$(sweep.missing)"},
    )
    problems = sweep_problems(data, "sweep.red.yml")
    assert all(p.file == "sweep.red.yml" for p in problems)
    assert_messages(problems, {
        "sweep.grid.learning_rate": "empty list",
        "sweep.zip.batch_size": "already defined in sweep.grid.batch_size",
        "sweep.zip.optimizer": "batch_size has 1 values, optimizer has 3",
        "sweep.zip.log": "batch_size has 1 values, log has 2",
        "sweep.random.samples": "positive integer",
        "sweep.random.parameters.lr": "low < high",
        "sweep.random.parameters.decay": "low > 0",
        "sweep.random.parameters.beta": "unknown distribution 'gamma'",
        "sweep.bogus": "unknown key",
        "inputs.log": "$(sweep.missing)",
    })


def test_distributions_whose_draws_would_not_fit_are_refused_at_both_ends():
    """randint's high end was never checked against the cli type (validate passed, exec failed
    at the first draw above 2**31); uniform [-1e308, 1e308] drew inf."""
    data = red(sweep={"random": {"samples": 2, "parameters": {
        "batch_size": {"randint": [1, 2**40]},
        "learning_rate": {"uniform": [-1e308, 1e308]},
    }}})
    assert_messages(sweep_problems(data, "sweep.red.yml"), {
        "sweep.random.parameters.batch_size.randint[1]": "expected an integer from -2147483648 to 2147483647",
        "sweep.random.parameters.learning_rate": "uniform needs high - low to be a finite number",
    })


def test_unused_parameter_and_reserved_name_are_errors():
    data = red(sweep={"grid": {"unused": [1], "index": [2]}})
    by_path = {format_key_path(p.path): p.message for p in sweep_problems(data, "f")}
    assert "neither a cli input nor used" in by_path["sweep.grid.unused"]
    assert "reserved" in by_path["sweep.grid.index"]


def test_the_unused_parameter_rule_is_documented_with_the_message_faice_gives():
    data = red(sweep={"grid": {"seed": [1, 2]}})
    by_path = {format_key_path(p.path): p.message for p in sweep_problems(data, "f")}
    documented = (DATA.parents[2] / "docs" / "red-reference.md").read_text()
    assert f"`sweep.grid.seed: {by_path['sweep.grid.seed']}`" in " ".join(documented.split())


def test_sweep_with_batches_form_and_empty_sweep_are_errors():
    data = red(sweep={}, batches=[])
    messages = [p.message for p in sweep_problems(data, "f")]
    assert any("single-batch form" in m for m in messages)
    assert any("empty sweep" in m for m in messages)


def test_values_that_do_not_fit_the_cli_type_are_reported_per_item():
    pytest.importorskip("faice.cwl.types", reason="check_value comes with the cli types module")
    data = red(sweep={"grid": {"batch_size": [8, "big", 16]}})
    assert "sweep.grid.batch_size[1]" in paths(sweep_problems(data, "f"))


def test_a_valid_sweep_has_no_problems_and_line_numbers_come_from_yaml():
    document = load_mapping(str(LR_SWEEP))
    assert sweep_problems(document.data, document.name) == []
    broken = document.data
    broken["sweep"]["zip"]["tag"] = ["a"]
    (problem,) = sweep_problems(broken, document.name)
    assert format_key_path(problem.path) == "sweep.zip.tag"
    assert problem.line == 29  # where `tag:` is written in the file


def test_expand_batches_refuses_an_invalid_sweep():
    with pytest.raises(ValidationError) as caught:
        expand_batches(red(sweep={"zip": {"learning_rate": [1.0, 2.0], "batch_size": [1]}}), "bad.red")
    assert "bad.red" in str(caught.value) and "sweep.zip.batch_size" in str(caught.value)


# ---------------------------------------------------------------- size before expansion


def _huge_grid(values: int = 10, parameters: int = 8) -> dict:
    """8 parameters × 10 values: 10⁸ batches from a few hundred bytes."""
    names = [f"p{i}" for i in range(parameters)]
    return red(
        inputs={"learning_rate": 0.1, "batch_size": 8, "log": "".join(f"$(sweep.{n})" for n in names)},
        sweep={"grid": {n: list(range(values)) for n in names}},
    )


def test_a_sweep_too_large_is_refused_at_once_without_expanding_it():
    import time
    import tracemalloc

    data = _huge_grid()
    (problem,) = sweep_problems(data, "huge.red.yml")  # first, so that old code never expands 10⁸ here
    assert problem.path == ("sweep",)
    tracemalloc.start()
    start = time.monotonic()
    try:
        with pytest.raises(ValidationError) as error:
            expand_batches(data, "huge.red.yml")
        seconds = time.monotonic() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    (problem,) = error.value.problems
    assert problem.path == ("sweep",)
    assert "the sweep would produce 100,000,000 batches, more than the limit of 100,000" in problem.message
    assert "FAICE_MAX_BATCHES" in problem.message
    assert seconds < 1.0 and peak < 20 * 1024**2, (seconds, peak)


def test_the_batch_limit_counts_grid_zip_and_random_samples_together():
    data = red(
        inputs={"learning_rate": 0.1, "batch_size": 8, "log": "$(sweep.a)$(sweep.b)$(sweep.c)"},
        sweep={
            "grid": {"a": [1, 2, 3]},
            "zip": {"b": [1, 2, 3, 4], "learning_rate": [0.1, 0.2, 0.3, 0.4]},
            "random": {"samples": 5, "parameters": {"c": {"uniform": [0, 1]}}},
        },
    )
    assert sweep_problems(data, "s.red.yml", limit=60) == []
    assert len(expand_batches(data, "s.red.yml", limit=60)) == 60
    (problem,) = sweep_problems(data, "s.red.yml", limit=59)
    assert "would produce 60 batches, more than the limit of 59" in problem.message


def test_the_limit_comes_from_the_environment_and_a_server_can_pass_a_lower_one(monkeypatch):
    data = _huge_grid(values=3, parameters=4)  # 81 batches
    assert len(expanded_red(data, "s.red.yml")["batches"]) == 81
    with pytest.raises(ValidationError, match="81 batches, more than the limit of 80"):
        expanded_red(data, "s.red.yml", limit=80)
    monkeypatch.setenv("FAICE_MAX_BATCHES", "50")
    with pytest.raises(ValidationError, match="81 batches, more than the limit of 50"):
        expand_batches(data, "s.red.yml")
    monkeypatch.setenv("FAICE_MAX_BATCHES", "1000000000")
    assert sweep_problems(_huge_grid(), "s.red.yml") == []


def test_validate_reports_the_oversized_sweep_with_its_line(tmp_path, capsys, monkeypatch):
    from faice.cli import main

    monkeypatch.setenv("FAICE_MAX_BATCHES", "200")
    path = tmp_path / "huge.red.yml"
    grid = "".join(f"    p{i}: [0, 1, 2]\n" for i in range(5))
    log = "".join(f"$(sweep.p{i})" for i in range(5))
    path.write_text(
        "redVersion: '9'\ncli:\n  cwlVersion: v1.0\n  class: CommandLineTool\n  baseCommand: echo\n"
        "  inputs:\n    log: {type: string, inputBinding: {position: 0}}\n  outputs: {}\n"
        f"container: {{engine: docker, settings: {{image: {{url: alpine}}}}}}\ninputs:\n  log: '{log}'\noutputs: {{}}\n"
        f"sweep:\n  grid:\n{grid}"
    )
    assert main(["validate", str(path)]) == 1
    assert f"{path}:13:1: sweep: the sweep would produce 243 batches, more than the limit of 200" in capsys.readouterr().err
