"""Early stopping: which running batch to stop, from the objective series of every batch of a run.

One :class:`Stopper` per run sees every batch's objective series (``[[step, value], …]`` as the
metrics reader keeps it): running batches ask :meth:`Stopper.check` once a second and get the
reason to stop or None; finished batches (and those kept by ``--resume``) are handed in with
:meth:`Stopper.finished` so later batches are compared with them too. The rules:

* ``median`` / ``percentile``: the batch's best value up to step *s* is worse than the median
  (the ``percentile`` % cut) of the other batches' best values up to *s*, counting only batches
  that reached *s* (at least ``minBatches``), from ``graceSteps`` on;
* ``threshold``: the newest value is below ``lower`` or above ``upper`` (or not finite);
* ``asha``: asynchronous successive halving. Rungs lie at ``graceSteps × reductionFactor^k``
  (below ``maxSteps`` when given). A batch reaching a rung is compared with every batch that
  reached it before (and itself): it goes on only when its best value so far is among the best
  ``1/reductionFactor`` of them (the first arrivals always go on, as in Optuna's
  ``SuccessiveHalvingPruner``), else it stops there. Each batch is judged once per rung;
* ``hyperband``: the batches are spread over brackets (by their id) and each bracket is an ASHA
  whose first rung is ``graceSteps × reductionFactor^bracket``: the early brackets stop
  aggressively, the late ones give slow starters room.

Values that are not finite (``None`` in a series: the batch diverged) count as worse than any
number. Nothing here reads files or raises on odd series.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections.abc import Iterable, Sequence
from typing import Any

from faice.red.metrics import EarlyStopping, MetricsSpec, Objective

__all__ = ["Stopper", "asha_rungs", "median_stopping", "percentile_stopping"]

Series = Sequence[Sequence[Any]]

_NOTHING = object()


# ---------------------------------------------------------------- helpers


def _best_until(series: Series, step: float, goal: str) -> Any:
    """Best finite value at steps <= ``step``; None when only non-finite; _NOTHING when none."""
    best: float | None = None
    seen = False
    for point_step, value in series:
        if point_step > step:
            break
        seen = True
        if isinstance(value, (int, float)) and math.isfinite(value):
            value = float(value)
            if best is None or (value > best if goal == "max" else value < best):
                best = value
    return best if seen else _NOTHING


def _quantile(values: list[float], share: float) -> float:
    """The ``share`` quantile (0..1) of sorted ``values``, linearly interpolated (numpy's default)."""
    position = share * (len(values) - 1)
    low = math.floor(position)
    high = min(low + 1, len(values) - 1)
    return values[low] + (values[high] - values[low]) * (position - low)


def _goal(objective: Objective | Any) -> str:
    return objective.goal if isinstance(objective, Objective) else str(objective.get("goal", "max"))


def _shown(value: Any) -> str:
    return "not finite" if value is None else f"{value:.6g}"


# ---------------------------------------------------------------- median and percentile


def percentile_stopping(
    objective: Objective | Any,
    this_batch_series: Series,
    other_batches_series: Iterable[Series],
    step: float,
    grace_steps: int,
    *,
    percentile: float = 50.0,
    min_batches: int = 3,
) -> bool:
    """True when the batch's best value up to ``step`` falls outside the best ``percentile`` % of
    the other batches' best values up to ``step`` (50: the median rule).

    Only other batches that reached ``step`` count, and at least ``min_batches`` of them must
    have; nothing is stopped before ``grace_steps``. A batch whose values so far are all
    non-finite (diverged) counts as worse than any finite cut.
    """
    return _cut_at(objective, this_batch_series, other_batches_series, step, grace_steps,
                   percentile, min_batches) is not None


def median_stopping(objective: Objective | Any, this_batch_series: Series, other_batches_series: Iterable[Series],
                    step: float, grace_steps: int, *, min_batches: int = 3) -> bool:
    """The median stopping rule: :func:`percentile_stopping` at 50 %."""
    return percentile_stopping(objective, this_batch_series, other_batches_series, step, grace_steps,
                               percentile=50.0, min_batches=min_batches)


def _cut_at(objective: Objective | Any, own_series: Series, others_series: Iterable[Series], step: float,
            grace_steps: int, percentile: float, min_batches: int) -> tuple[Any, float, int] | None:
    """(own best, the cut, how many others) when the batch is to stop at ``step``, else None."""
    goal = _goal(objective)
    if step < grace_steps:
        return None
    own = _best_until(own_series, step, goal)
    if own is _NOTHING:
        return None
    others = []
    for series in others_series:
        if not series or series[-1][0] < step:
            continue
        value = _best_until(series, step, goal)
        if isinstance(value, float):
            others.append(value)
    if len(others) < max(1, min_batches):
        return None
    others.sort()
    # Keeping the best p % means the cut is the (100 - p) % quantile for max, the p % one for min.
    cut = _quantile(others, (100.0 - percentile) / 100.0 if goal == "max" else percentile / 100.0)
    if own is None or (own < cut if goal == "max" else own > cut):
        return own, cut, len(others)
    return None


# ---------------------------------------------------------------- successive halving


def asha_rungs(grace_steps: int, reduction_factor: int, max_steps: int | None, *, up_to: float) -> list[int]:
    """The rung steps ``grace × factor^k`` that are <= ``up_to`` (and < ``max_steps``)."""
    rungs = []
    step = max(1, grace_steps)
    while step <= up_to and (max_steps is None or step < max_steps):
        rungs.append(step)
        step *= max(2, reduction_factor)
    return rungs


def _promotable(own: float | None, competing: list[float | None], factor: int, goal: str) -> tuple[bool, float | None]:
    """Optuna's rule: keep the best ``len // factor`` (at least the best one), ``own`` included."""
    if own is None:
        return False, None
    finite = sorted((v for v in competing if v is not None), reverse=goal == "max")
    keep = max(1, len(competing) // factor)
    cutoff = finite[min(keep, len(finite)) - 1] if finite else own
    return (own >= cutoff if goal == "max" else own <= cutoff), cutoff


def hyperband_brackets(grace_steps: int, reduction_factor: int, max_steps: int) -> int:
    """How many ASHA brackets fit: first rungs ``grace × factor^b`` below ``max_steps``."""
    count, first = 0, max(1, grace_steps)
    while first < max_steps:
        count += 1
        first *= max(2, reduction_factor)
    return max(1, count)


def hyperband_bracket(batch_id: str, brackets: int) -> int:
    """The bracket of a batch: from its id, so a resumed run puts it in the same one."""
    return int(hashlib.sha256(batch_id.encode("utf-8")).hexdigest()[:8], 16) % max(1, brackets)


# ---------------------------------------------------------------- the run's stopper


class Stopper:
    """The early-stopping rule of one run, over every batch's objective series (thread-safe)."""

    def __init__(self, spec: MetricsSpec) -> None:
        assert spec.early_stopping is not None
        self.early: EarlyStopping = spec.early_stopping
        self.objective = spec.objective
        self._series: dict[str, Series] = {}
        # asha/hyperband: bracket → rung step → batch id → best value up to the rung
        self._rungs: dict[int, dict[int, dict[str, float | None]]] = {}
        self._lock = threading.Lock()

    @classmethod
    def for_spec(cls, spec: MetricsSpec | None) -> Stopper | None:
        """A stopper when ``spec`` asks for early stopping, else None."""
        return cls(spec) if spec is not None and spec.early_stopping is not None else None

    def check(self, batch_id: str, series: Series) -> str | None:
        """Called for a running batch with its series so far: why it is to stop, or None."""
        with self._lock:
            self._series[batch_id] = list(series)
            if not series:
                return None
            if self.early.rule in ("asha", "hyperband"):
                return self._rung_decision(batch_id, series)
            if self.early.rule == "threshold":
                return self._threshold(series)
            others = [s for other, s in self._series.items() if other != batch_id]
        return self._percentile(series, others)

    def finished(self, batch_id: str, series: Series) -> None:
        """A batch that ended (or was kept by ``--resume``): its whole series counts for the others."""
        with self._lock:
            self._series[batch_id] = list(series)
            if self.early.rule in ("asha", "hyperband") and series:
                self._record_rungs(batch_id, series)

    # -- median and percentile

    def _percentile(self, series: Series, others: list[Series]) -> str | None:
        early = self.early
        percentile = 50.0 if early.rule == "median" else early.percentile
        needed = max(1, early.min_batches)
        reached = sorted((s[-1][0] for s in others if s), reverse=True)
        if len(reached) < needed:
            return None
        # Compare at the latest step that enough others have reached: batches polled a moment
        # apart are rarely at the same step.
        step = min(series[-1][0], reached[needed - 1])
        found = _cut_at(self.objective, series, others, step, early.grace_steps, percentile, needed)
        if found is None:
            return None
        own, cut, counted = found
        what = ("the median" if early.rule == "median"
                else f"the cut for the best {percentile:g} %")
        return (f"stopped early by the {early.rule} rule at step {step}: best {self.objective.name} so far "
                f"{_shown(own)} is worse ({self.objective.goal}) than {what} ({_shown(cut)}) of {counted} "
                "other batches at that step")

    # -- threshold

    def _threshold(self, series: Series) -> str | None:
        early = self.early
        step, value = series[-1][0], series[-1][1]
        if step < early.grace_steps:
            return None
        name = self.objective.name
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            return f"stopped early by the threshold rule at step {step}: {name} is not finite"
        if early.lower is not None and value < early.lower:
            return f"stopped early by the threshold rule at step {step}: {name} = {value:.6g} is below {early.lower:g}"
        if early.upper is not None and value > early.upper:
            return f"stopped early by the threshold rule at step {step}: {name} = {value:.6g} is above {early.upper:g}"
        return None

    # -- asha and hyperband

    def _bracket(self, batch_id: str) -> tuple[int, int]:
        """(bracket, its first rung) of a batch."""
        early = self.early
        if early.rule != "hyperband" or early.max_steps is None:
            return 0, max(1, early.grace_steps)
        bracket = hyperband_bracket(batch_id, hyperband_brackets(early.grace_steps, early.reduction_factor,
                                                                 early.max_steps))
        return bracket, max(1, early.grace_steps) * max(2, early.reduction_factor) ** bracket

    def _record_rungs(self, batch_id: str, series: Series) -> None:
        bracket, first = self._bracket(batch_id)
        rungs = self._rungs.setdefault(bracket, {})
        goal = self.objective.goal
        for rung in asha_rungs(first, self.early.reduction_factor, self.early.max_steps, up_to=series[-1][0]):
            value = _best_until(series, rung, goal)
            if value is not _NOTHING:
                rungs.setdefault(rung, {}).setdefault(batch_id, value)

    def _rung_decision(self, batch_id: str, series: Series) -> str | None:
        early, goal = self.early, self.objective.goal
        bracket, first = self._bracket(batch_id)
        rungs = self._rungs.setdefault(bracket, {})
        all_rungs = asha_rungs(first, early.reduction_factor, early.max_steps, up_to=math.inf) \
            if early.max_steps is not None else None
        for number, rung in enumerate(asha_rungs(first, early.reduction_factor, early.max_steps,
                                                 up_to=series[-1][0]), start=1):
            recorded = rungs.setdefault(rung, {})
            if batch_id in recorded:
                continue  # judged at this rung already
            value = _best_until(series, rung, goal)
            if value is _NOTHING:
                continue
            recorded[batch_id] = value
            keep, cutoff = _promotable(value, list(recorded.values()), early.reduction_factor, goal)
            if keep:
                continue
            where = f"rung {number}" + (f" of {len(all_rungs)}" if all_rungs else "")
            if early.rule == "hyperband":
                where += f", bracket {bracket}"
            kept = max(1, len(recorded) // early.reduction_factor)
            return (f"stopped early by the {early.rule} rule at step {rung} ({where}): best {self.objective.name} "
                    f"so far {_shown(value)} is not among the best {kept} of {len(recorded)} batches that "
                    f"reached it (cut {_shown(cutoff)}, {goal})")
        return None
