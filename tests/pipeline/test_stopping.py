"""Early-stopping rules (faice.pipeline.stopping) on real series, and their RED checks."""

from __future__ import annotations

import pytest
from red_yaml import red_head

from faice.errors import ValidationError
from faice.pipeline.metrics import MetricsReader
from faice.pipeline.stopping import (
    Stopper,
    asha_rungs,
    hyperband_bracket,
    median_stopping,
    percentile_stopping,
)
from faice.red.load import parse_text
from faice.red.metrics import MetricsSpec
from faice.red.validate import validate_red


def spec(early: dict, goal: str = "max", name: str = "acc") -> MetricsSpec:
    return MetricsSpec.from_mapping({"objective": {"name": name, "goal": goal}, "earlyStopping": early,
                                     "sources": [{"stdout": True}]})


def test_median_stopping_rule():
    objective = {"name": "val_accuracy", "goal": "max"}
    good = [[s, 0.5 + s * 0.1] for s in range(5)]
    others = [good, [[s, 0.45 + s * 0.1] for s in range(5)], [[s, 0.55 + s * 0.1] for s in range(5)]]
    bad = [[s, 0.3] for s in range(3)]
    assert median_stopping(objective, bad, others, 2, grace_steps=1)
    assert not median_stopping(objective, bad, others, 0, grace_steps=1), "inside the grace period"
    assert not median_stopping(objective, good, others, 2, grace_steps=1), "as good as the median"
    assert not median_stopping(objective, bad, others[:2], 2, grace_steps=1), "too few other batches"
    assert not median_stopping(objective, bad, [[[0, 0.9]]] * 3, 2, grace_steps=1), "others have not reached step 2"
    diverged = [[0, None], [1, None], [2, None]]
    assert median_stopping(objective, diverged, others, 2, grace_steps=1)
    low = {"name": "loss", "goal": "min"}
    assert median_stopping(low, [[s, 0.9] for s in range(3)], others, 2, grace_steps=0)
    assert not median_stopping(low, [[s, 0.1] for s in range(3)], others, 2, grace_steps=0)


def test_percentile_keeps_the_best_share():
    objective = {"name": "acc", "goal": "max"}
    others = [[[0, v]] for v in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)]
    # best 25 %: the cut is the 75 % quantile (0.7); 0.65 goes, 0.75 stays
    assert percentile_stopping(objective, [[0, 0.65]], others, 0, 0, percentile=25, min_batches=3)
    assert not percentile_stopping(objective, [[0, 0.75]], others, 0, 0, percentile=25, min_batches=3)
    # best 90 %: only the very worst go
    assert not percentile_stopping(objective, [[0, 0.25]], others, 0, 0, percentile=90, min_batches=3)
    assert percentile_stopping(objective, [[0, 0.1]], others, 0, 0, percentile=90, min_batches=3)
    loss = {"name": "loss", "goal": "min"}
    assert percentile_stopping(loss, [[0, 0.35]], others, 0, 0, percentile=25, min_batches=3)
    assert not percentile_stopping(loss, [[0, 0.25]], others, 0, 0, percentile=25, min_batches=3)


def test_threshold_stops_outside_the_bounds_and_on_divergence():
    stopper = Stopper(spec({"rule": "threshold", "lower": 0.2, "graceSteps": 2}))
    assert stopper.check("a", [[0, 0.0], [1, 0.1]]) is None, "inside the grace period"
    reason = stopper.check("a", [[0, 0.0], [1, 0.1], [2, 0.15]])
    assert reason and "below 0.2" in reason and "step 2" in reason
    assert stopper.check("b", [[0, 0.5], [1, 0.5], [2, 0.5]]) is None
    assert "not finite" in (stopper.check("c", [[0, 0.5], [1, 0.5], [2, None]]) or "")
    upper = Stopper(spec({"rule": "threshold", "upper": 10.0}, goal="min", name="loss"))
    assert "above 10" in (upper.check("d", [[0, 1.0], [1, 12.0]]) or "")


def test_asha_keeps_the_best_third_at_each_rung():
    assert asha_rungs(1, 3, 30, up_to=100) == [1, 3, 9, 27]
    assert asha_rungs(2, 2, 9, up_to=5) == [2, 4]
    stopper = Stopper(spec({"rule": "asha", "graceSteps": 1, "reductionFactor": 3, "maxSteps": 30}))
    # Six batches reach rung 1 (step 1) one after the other with values 0.5, 0.6, 0.4, 0.7, 0.3, 0.8.
    verdicts = {}
    for name, value in zip("abcdef", (0.5, 0.6, 0.4, 0.7, 0.3, 0.8), strict=True):
        verdicts[name] = stopper.check(name, [[0, 0.0], [1, value]])
    # a: alone; b: better than a; c: 3 at the rung keep 1 (0.6), c is worse: stopped;
    # d: the best so far; e: 5 keep 1 (0.7): stopped; f: the best.
    assert [name for name, reason in verdicts.items() if reason] == ["c", "e"], verdicts
    assert "rung 1 of 4" in (verdicts["c"] or "") and "best 1 of 3" in (verdicts["c"] or "")
    # A batch is judged once per rung: asking again at the same step does not stop a kept batch.
    assert stopper.check("a", [[0, 0.0], [1, 0.5], [2, 0.5]]) is None
    # Finished batches count at the rungs they passed.
    stopper.finished("g", [[s, 0.95] for s in range(10)])
    assert stopper.check("h", [[s, 0.9] for s in range(4)]) is not None, "rung 3: worse than g and the rest"
    # Steps from maxSteps on have no rung: nothing stops a batch there.
    late = Stopper(spec({"rule": "asha", "graceSteps": 5, "reductionFactor": 2, "maxSteps": 5}))
    late.check("x", [[5, 0.9]])
    assert late.check("y", [[5, 0.1]]) is None


def test_asha_series_that_skips_rungs_is_judged_at_each():
    stopper = Stopper(spec({"rule": "asha", "graceSteps": 1, "reductionFactor": 2}, goal="min", name="loss"))
    stopper.finished("good", [[s, 1.0 / (s + 1)] for s in range(10)])
    # First poll of a slow reader: the batch is already at step 5, worse at rung 1 (and after).
    reason = stopper.check("bad", [[s, 2.0] for s in range(6)])
    assert reason and "at step 1 " in reason


def test_hyperband_spreads_batches_over_brackets():
    early = {"rule": "hyperband", "graceSteps": 1, "reductionFactor": 3, "maxSteps": 27}
    stopper = Stopper(spec(early))
    ids = [f"b-{i:012x}" for i in range(60)]
    brackets = {hyperband_bracket(i, 3) for i in ids}
    assert brackets == {0, 1, 2}
    # A batch of bracket 2 has its first rung at 9: it is never stopped before step 9.
    late = next(i for i in ids if hyperband_bracket(i, 3) == 2)
    for other in ids[:20]:
        if other != late and hyperband_bracket(other, 3) == 2:
            stopper.finished(other, [[s, 0.9] for s in range(20)])
    assert stopper.check(late, [[s, 0.1] for s in range(9)]) is None
    reason = stopper.check(late, [[s, 0.1] for s in range(10)])
    assert reason and "bracket 2" in reason and "step 9" in reason


def test_median_compares_the_same_epoch_without_a_step_column(tmp_path):
    """Batch sizes are swept: a small batch size prints more loss lines per epoch. Without a
    step column the objective's step is how many values of it came before (its epoch), not
    the line's position, so a batch is compared with the others at the same epoch."""
    metrics = spec({"rule": "median", "graceSteps": 1, "minBatches": 3}, name="val_acc")

    def lines(loss_lines_per_epoch: int, epochs: int) -> str:
        out = []
        for epoch in range(epochs):
            out += [f"loss={1.0 / (epoch + 1)}"] * loss_lines_per_epoch
            out.append(f"val_acc={0.5 + 0.05 * epoch}")
        return "\n".join(out) + "\n"

    def series(name: str, text: str) -> list:
        (tmp_path / name).mkdir()
        (tmp_path / name / "stdout.txt").write_text(text)
        reader = MetricsReader.for_batch(metrics, outputs_dir=tmp_path / name, stdout_file=tmp_path / name / "stdout.txt")
        return reader.finish()["series"]["val_acc"]

    stopper = Stopper(metrics)
    for name in ("a", "b", "c"):
        stopper.finished(name, series(name, lines(1, 10)))  # batch size 256: 1 loss line an epoch
    small = series("small", lines(8, 3))  # batch size 16: 8 loss lines an epoch, at epoch 2
    assert [step for step, _ in small] == [0, 1, 2]
    # Learning exactly as fast as the others, it is not stopped (compared at line 26 it would be).
    assert stopper.check("small", small) is None
    assert stopper.check("slower", [[0, 0.5], [1, 0.5], [2, 0.5]]) is not None


BASE = red_head("[python3, train.py]") + """\
  inputs: {lr: {type: float, inputBinding: {prefix: --lr}}}
  outputs: {}
inputs: {lr: 0.1}
container: {engine: docker, settings: {image: {url: debian:bookworm-slim}}}
execution: {engine: ccfaice, settings: {}}
metrics:
  objective: {name: acc, goal: max}
  sources: [{stdout: true}]
"""


def problems(early: str) -> list[str]:
    with pytest.raises(ValidationError) as err:
        validate_red(parse_text("exp.red.yml", BASE + f"  earlyStopping: {early}\n"))
    return [f"{'.'.join(map(str, p.path))} (line {p.line}): {p.message}" for p in err.value.problems]


@pytest.mark.parametrize(("early", "expected"), [
    ("{rule: asha, minBatches: 3}", "metrics.earlyStopping.minBatches (line 14): minBatches applies to the rules "
                                    "median, percentile; rule asha takes reductionFactor, graceSteps, maxSteps"),
    ("{rule: asha, reductionFactor: 1}", "metrics.earlyStopping.reductionFactor (line 14): expected an integer >= 2"),
    ("{rule: asha, graceSteps: 0}", "metrics.earlyStopping.graceSteps (line 14): expected an integer >= 1"),
    ("{rule: asha, graceSteps: 4, maxSteps: 4}", "expected maxSteps > graceSteps (4)"),
    ("{rule: hyperband}", "metrics.earlyStopping.maxSteps (line 14): missing: hyperband sizes its brackets"),
    ("{rule: percentile}", "metrics.earlyStopping.percentile (line 14): missing"),
    ("{rule: percentile, percentile: 100}", "expected a number between 0 and 100 (exclusive), got 100"),
    ("{rule: threshold}", "rule threshold needs lower (stop below it), upper (stop above it) or both"),
    ("{rule: threshold, lower: 2, upper: 1}", "expected upper > lower"),
    ("{rule: threshold, lower: high}", "metrics.earlyStopping.lower (line 14): expected a finite number"),
    ("{rule: bohb}", "metrics.earlyStopping.rule (line 14): expected one of median, percentile, threshold, asha, "
                     "hyperband, got 'bohb'"),
    ("{rule: median, speed: 3}", "metrics.earlyStopping.speed (line 14): unknown key; rule median takes graceSteps, "
                                 "minBatches"),
])
def test_rule_settings_are_checked_with_key_paths(early, expected):
    found = problems(early)
    assert any(expected in line for line in found), found


def test_every_rule_with_its_settings_is_valid():
    for early in ("{rule: median, graceSteps: 2, minBatches: 2}", "{rule: percentile, percentile: 25}",
                  "{rule: threshold, lower: 0.1, graceSteps: 3}", "{rule: asha, reductionFactor: 2, maxSteps: 30}",
                  "{rule: hyperband, graceSteps: 1, reductionFactor: 3, maxSteps: 27}"):
        validate_red(parse_text("exp.red.yml", BASE + f"  earlyStopping: {early}\n"))
    parsed = spec({"rule": "hyperband", "graceSteps": 2, "reductionFactor": 3, "maxSteps": 27}).early_stopping
    assert parsed is not None and (parsed.rule, parsed.grace_steps, parsed.reduction_factor, parsed.max_steps) == \
        ("hyperband", 2, 3, 27)


def test_workers_that_run_apart_see_each_others_batches_through_the_run_directory(tmp_path, monkeypatch):
    """Two packed-Slurm workers (two SharedStoppers on one shared directory): a batch on one is
    judged against the batches the other runs and the finished ones; odd files are ignored."""
    from faice.pipeline.stopping import SharedStopper

    monkeypatch.setattr(SharedStopper, "REFRESH_S", 0.0)
    metrics = spec({"rule": "asha", "graceSteps": 1, "reductionFactor": 2})
    where = {"live_dir": tmp_path / "live", "batches_dir": tmp_path / "batches"}
    one, two = SharedStopper(metrics, **where), SharedStopper(metrics, **where)
    (tmp_path / "batches" / "b-done").mkdir(parents=True)
    (tmp_path / "batches" / "b-done" / "metrics.json").write_text('{"series": {"acc": [[0, 0.5], [1, 0.9]]}}')
    (tmp_path / "batches" / "b-odd").mkdir()
    (tmp_path / "batches" / "b-odd" / "metrics.json").write_text('{"series": {"acc": "lots"}}')
    assert one.check("b-fast", [[0, 0.5], [1, 0.95]]) is None  # better than the finished one
    assert (tmp_path / "live" / "b-fast.json").exists()
    (tmp_path / "live" / "b-junk.json").write_text("not json")
    (tmp_path / "live" / "b-link.json").symlink_to(tmp_path / "batches" / "b-done" / "metrics.json")
    reason = two.check("b-slow", [[0, 0.1], [1, 0.2]])
    assert reason and "best 1 of 3 batches" in reason  # b-done, b-fast (running on the other worker), itself
    one.done("b-fast")
    assert not (tmp_path / "live" / "b-fast.json").exists()
