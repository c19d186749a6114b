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
import json
import math
import os
import stat
import threading
import time
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path
from typing import Any

from faice.pipeline.rundir import BatchDir
from faice.red.metrics import EarlyStopping, MetricsSpec, Objective

__all__ = ["SharedStopper", "Stopper", "share_finished", "asha_rungs", "median_stopping", "percentile_stopping"]

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
        self._finished: set[str] = set()
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
            self._finished.add(batch_id)
            if self.early.rule in ("asha", "hyperband") and series:
                self._record_rungs(batch_id, series)

    def finished_series(self, excluding: Collection[str] = ()) -> dict[str, list[Any]]:
        """The series of every batch handed in with :meth:`finished` but those ``excluding``
        (what batches deciding elsewhere must be told: :class:`SharedStopper`)."""
        with self._lock:
            return {batch_id: list(self._series[batch_id]) for batch_id in self._finished - set(excluding)}

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


# ---------------------------------------------------------------- batches that run apart


class SharedStopper:
    """The rule for batches that run apart (the workers of a packed Slurm run, on several nodes),
    from what they share: the run directory.

    Each running batch's series is written to ``live_dir/<batch id>.json`` as it is checked
    (at most every ``REFRESH_S``); what the other workers wrote there, and the ``metrics.json``
    of every finished batch under ``batches_dir``, are read at most as often and count like
    the batches of a local run. Each worker decides for its own batches with what it has seen:
    a batch that reached a rung a moment ago on another node may be missing, never invented.
    """

    REFRESH_S = 2.0
    MAX_FILE_BYTES = 4 * 1024 * 1024  # a live series or metrics.json larger than this is skipped

    def __init__(self, spec: MetricsSpec, *, live_dir: Path, batches_dir: Path) -> None:
        self.stopper = Stopper(spec)
        self.name = spec.objective.name
        self.live_dir = Path(live_dir)
        self.batches_dir = Path(batches_dir)
        self._finished: set[str] = set()
        self._own: set[str] = set()
        self._published: dict[str, float] = {}
        self._refreshed = 0.0
        self._lock = threading.Lock()

    @classmethod
    def for_spec(cls, spec: MetricsSpec | None, **where: Path) -> SharedStopper | None:
        return cls(spec, **where) if spec is not None and spec.early_stopping is not None else None

    @classmethod
    def in_directory(cls, spec: MetricsSpec | None, directory: Path) -> SharedStopper | None:
        """The rule over a directory of its own (``live/`` and ``batches/``), which whoever
        sees the batches end fills with :func:`share_finished`."""
        return cls.for_spec(spec, live_dir=Path(directory) / "live", batches_dir=Path(directory) / "batches")

    def check(self, batch_id: str, series: Series) -> str | None:
        """The stop rule of one running batch (as :meth:`Stopper.check`)."""
        now = time.monotonic()
        with self._lock:
            self._own.add(batch_id)
            publish = now - self._published.get(batch_id, 0.0) >= self.REFRESH_S
            if publish:
                self._published[batch_id] = now
            refresh = now - self._refreshed >= self.REFRESH_S
            if refresh:
                self._refreshed = now
        if publish:
            self._publish(batch_id, series)
        if refresh:
            self._refresh()
        return self.stopper.check(batch_id, series)

    def done(self, batch_id: str) -> None:
        """The batch ended: its live series goes (its metrics.json speaks for it from now on)."""
        with self._lock:
            self._own.discard(batch_id)
        try:
            os.unlink(self.live_dir / f"{batch_id}.json")
        except OSError:
            pass

    def _publish(self, batch_id: str, series: Series) -> None:
        from faice.files import atomic_write_json

        try:
            self.live_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.live_dir / f"{batch_id}.json", {"series": [list(p) for p in series]})
        except OSError:
            pass  # the others decide without it

    def _refresh(self) -> None:
        with self._lock:
            own, finished = set(self._own), set(self._finished)
        try:
            ended = [p for p in self.batches_dir.iterdir() if p.name not in finished and p.name not in own]
        except OSError:
            ended = []
        for directory in ended:
            data = self._read(BatchDir(directory).metrics)
            if data is not None:
                series = _series_of(data, self.name)
                if series is not None:
                    self.stopper.finished(directory.name, series)
                with self._lock:
                    self._finished.add(directory.name)
        try:
            live = [p for p in self.live_dir.iterdir() if p.suffix == ".json"]
        except OSError:
            live = []
        for path in live:
            if path.stem in own or path.stem in finished:
                continue
            data = self._read(path)
            series = _series_of(data, self.name) if data is not None else None
            if series is not None:
                self.stopper.finished(path.stem, series)

    def _read(self, path: Path) -> Any:
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
        except OSError:
            return None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_size > self.MAX_FILE_BYTES:
                return None
            return json.loads(os.read(fd, info.st_size + 1))
        except (OSError, ValueError):
            return None
        finally:
            os.close(fd)


def share_finished(directory: Path, batch_id: str, name: str, series: Series) -> None:
    """Tell the batches that decide over ``directory`` (:meth:`SharedStopper.in_directory`)
    that ``batch_id`` ended with this objective series (its live series goes)."""
    from faice.files import atomic_write_json

    target = Path(directory) / "batches" / batch_id
    target.mkdir(parents=True, exist_ok=True)
    atomic_write_json(BatchDir(target).metrics, {"series": {name: [list(p) for p in series]}})
    try:
        os.unlink(Path(directory) / "live" / f"{batch_id}.json")
    except OSError:
        pass


def _series_of(data: Any, name: str) -> list[list[Any]] | None:
    """The ``[[step, value], …]`` of ``name`` in a metrics.json or live file; None when malformed."""
    series = data.get("series") if isinstance(data, dict) else None
    if isinstance(series, dict):
        series = series.get(name)
    if not isinstance(series, list):
        return None
    points = []
    for point in series:
        if (isinstance(point, list) and len(point) == 2 and isinstance(point[0], (int, float))
                and (point[1] is None or isinstance(point[1], (int, float)))):
            points.append(point)
    return points
