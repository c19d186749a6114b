"""``sweep.search`` while a run goes: Optuna's ask/tell, one trial per batch.

A free worker asks :meth:`Search.propose` for the next batch: the sampler proposes the
parameters from every trial told so far, the trials in flight included (TPE's constant liar:
parallel proposals differ). The trial becomes a batch like any other (content-derived id,
record, metrics, results). When it ends :meth:`Search.tell` gives the sampler its objective
series as intermediate values and its end: ``complete`` with the objective, ``pruned`` when
an early-stopping rule stopped it (TPE still learns from a stopped trial's last value),
``fail`` otherwise. Nothing of this runs in the image: the values come from the metrics files.

The study lives in the run directory (``search/journal.log``, Optuna's journal storage), so
``--resume`` replays the finished trials into the sampler and continues; a trial that was in
flight when the run was interrupted is proposed again first (the same parameters, so the same
batch id). ``search/trials.json`` lists the trials in order for ``faice results``.
"""

from __future__ import annotations

import math
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from faice.errors import EngineError, UsageError
from faice.files import atomic_write_json, read_json
from faice.red.experiment import Batch, Experiment
from faice.red.metrics import MetricsSpec
from faice.red.search import SearchSpec
from faice.red.sweep import search_batch

SEARCH_DIR = "search"
JOURNAL_FILE = "journal.log"
TRIALS_FILE = "trials.json"
STUDY_NAME = "faice"
MAX_REPORTED_POINTS = 200  # intermediate values per trial (evenly thinned; the last one kept)
INSTALL_HINT = "pip install 'faice[search]'"
# Extra packages some algorithms need, beyond Optuna itself.
NEEDS = {"cmaes": ("cmaes", "faice[search]"), "qmc": ("scipy", "faice[search]"),
         "gp": ("torch", "PyTorch (pip install torch)")}


def require_optuna(algorithm: str = "tpe") -> Any:
    """The optuna module, or a clear error naming the extra to install."""
    try:
        import optuna
    except ImportError:
        raise UsageError(f"sweep.search needs Optuna, the optional extra faice[search]: {INSTALL_HINT}") from None
    if algorithm in NEEDS:
        import importlib.util

        module, what = NEEDS[algorithm]
        if importlib.util.find_spec(module) is None:
            raise UsageError(f"sweep.search algorithm {algorithm} needs the package {module!r}: install {what}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def search_dir(outdir: Path) -> Path:
    return Path(outdir) / SEARCH_DIR


def read_trials(outdir: Path) -> list[dict[str, Any]]:
    """The trials of a search run in order (``[]`` when the run is no search)."""
    data = read_json(search_dir(outdir) / TRIALS_FILE)
    trials = data.get("trials") if isinstance(data, dict) else None
    return [t for t in trials if isinstance(t, dict)] if isinstance(trials, list) else []


class Search:
    """The search of one run: its study, the trials in flight, the budget."""

    def __init__(self, experiment: Experiment, metrics: MetricsSpec, outdir: Path, *, resume: bool) -> None:
        self.spec = SearchSpec.from_sweep(experiment.data["sweep"])
        self.optuna = optuna = require_optuna(self.spec.algorithm)
        self.data = experiment.data
        self.metrics = metrics
        self.dir = search_dir(outdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        journal = self.dir / JOURNAL_FILE
        if not resume and journal.exists():
            journal.unlink()
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        self.storage = JournalStorage(JournalFileBackend(str(journal)))
        direction = "maximize" if metrics.objective.goal == "max" else "minimize"
        self.study = optuna.create_study(study_name=STUDY_NAME, storage=self.storage, direction=direction,
                                         load_if_exists=True, sampler=optuna.samplers.RandomSampler(seed=0))
        if self.study.direction.name.lower() != direction:
            raise EngineError(f"{self.dir}: the search recorded there {self.study.direction.name.lower()}s; "
                              f"the RED file's objective asks to {direction}")
        self._lock = threading.Lock()
        self._in_flight: dict[str, Any] = {}  # batch id → optuna Trial
        self._ids: set[str] = set()
        self._rows: list[dict[str, Any]] = read_trials(outdir) if resume else []
        self.reused = self._replay()
        # A resumed search goes on with fresh random numbers (the same seed would repeat its start).
        self.study.sampler = self._sampler(self.spec.seed + len(self.study.trials))
        self.distributions = {name: self._distribution(kind, arguments)
                              for name, (kind, arguments) in self.spec.parameters.items()}
        self._asked = self.reused

    # -- set-up

    def _sampler(self, seed: int) -> Any:
        samplers = self.optuna.samplers
        algorithm, startup = self.spec.algorithm, self.spec.startup_trials
        if algorithm == "tpe":
            return samplers.TPESampler(seed=seed, n_startup_trials=10 if startup is None else startup,
                                       constant_liar=True, multivariate=True)
        if algorithm == "gp":
            return samplers.GPSampler(seed=seed, n_startup_trials=10 if startup is None else startup)
        if algorithm == "cmaes":
            return samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
        if algorithm == "qmc":
            return samplers.QMCSampler(seed=seed, scramble=True, warn_independent_sampling=False)
        return samplers.RandomSampler(seed=seed)

    def _distribution(self, kind: str, arguments: list[Any]) -> Any:
        distributions = self.optuna.distributions
        if kind == "uniform":
            return distributions.FloatDistribution(float(arguments[0]), float(arguments[1]))
        if kind == "loguniform":
            return distributions.FloatDistribution(float(arguments[0]), float(arguments[1]), log=True)
        if kind == "randint":
            return distributions.IntDistribution(int(arguments[0]), int(arguments[1]))
        return distributions.CategoricalDistribution(list(arguments))

    def _replay(self) -> int:
        """Finished trials count towards the budget; one interrupted in flight is proposed again."""
        state = self.optuna.trial.TrialState
        finished = 0
        for trial in self.study.get_trials(deepcopy=False):
            if trial.state in (state.RUNNING, state.WAITING):
                self.storage.set_trial_user_attr(trial._trial_id, "interrupted", True)
                self.study.tell(trial.number, state=state.FAIL)
                if trial.params:
                    self.study.enqueue_trial(trial.params, user_attrs={"origin": "again"})
            elif trial.state.is_finished() and not trial.user_attrs.get("interrupted"):
                finished += 1
                if trial.user_attrs.get("batch"):
                    self._ids.add(str(trial.user_attrs["batch"]))
        self._rows = [row for row in self._rows if row.get("batch") in self._ids]
        return finished

    def finished_batches(self) -> list[str]:
        """The batch ids of the trials a resumed search keeps."""
        return sorted(self._ids)

    # -- ask and tell

    @property
    def remaining(self) -> int:
        return max(0, self.spec.trials - self._asked)

    def propose(self) -> Batch | None:
        """The next trial's batch, or None when the budget is spent."""
        with self._lock:
            if self._asked >= self.spec.trials:
                return None
            state = self.optuna.trial.TrialState
            told = len(self.study.get_trials(deepcopy=False, states=(state.COMPLETE, state.PRUNED)))
            trial = self.study.ask(self.distributions)
            origin = trial.user_attrs.get("origin") or self._origin(told)
            batch = search_batch(self.data, trial.number, dict(trial.params))
            base, count = batch.id, 0
            while batch.id in self._ids:  # the same parameters proposed twice (choices only)
                count += 1
                batch.id = f"{base}-{count}"
            self._ids.add(batch.id)
            trial.set_user_attr("batch", batch.id)
            trial.set_user_attr("origin", origin)
            self._in_flight[batch.id] = trial
            self._asked += 1
            self._rows.append({"trial": trial.number, "batch": batch.id, "origin": origin,
                               "parameters": batch.parameters, "state": "running", "value": None, "message": None})
            self._write_rows()
            return batch

    def _origin(self, told: int) -> str:
        if self.spec.algorithm in ("tpe", "gp"):
            startup = 10 if self.spec.startup_trials is None else self.spec.startup_trials
            return "startup" if told < startup else "sampler"
        return "sampler"

    def tell(self, batch_id: str, state: str, value: float | None, series: Sequence[Sequence[Any]] | None,
             message: str | None = None) -> None:
        """A trial's batch ended (``state`` as in its record): the sampler learns from it."""
        states = self.optuna.trial.TrialState
        with self._lock:
            trial = self._in_flight.pop(batch_id, None)
            if trial is None:
                return
            for step, point in _thinned(series or []):
                trial.report(point, step)
            finite = value is not None and math.isfinite(value)
            if state == "succeeded" and finite:
                self.study.tell(trial, value)
                told = "complete"
            elif state == "stopped":
                self.study.tell(trial, state=states.PRUNED)
                told = "pruned"
            else:
                if state in ("cancelled", "interrupted"):
                    trial.set_user_attr("interrupted", True)  # proposed again on --resume
                    self._asked -= 1
                self.study.tell(trial, state=states.FAIL)
                told = "fail"
            for row in self._rows:
                if row["batch"] == batch_id:
                    row.update(state=state, value=value if finite else None, sampler=told, message=message)
            self._write_rows()

    def cancel_all(self) -> None:
        """The run stopped: trials still in flight are failed (and proposed again on --resume)."""
        for batch_id in list(self._in_flight):
            self.tell(batch_id, "cancelled", None, None)

    def _write_rows(self) -> None:
        rows = sorted(self._rows, key=lambda row: row["trial"])
        atomic_write_json(self.dir / TRIALS_FILE, {"algorithm": self.spec.algorithm, "trials": rows,
                                                  "budget": self.spec.trials, "objective": self.metrics.objective.as_dict()})


def _thinned(series: Sequence[Sequence[Any]]) -> list[tuple[int, float]]:
    """At most MAX_REPORTED_POINTS finite (step, value) pairs with distinct integer steps."""
    points: dict[int, float] = {}
    for step, value in series:
        if isinstance(step, (int, float)) and isinstance(value, (int, float)) and math.isfinite(value):
            points[int(step)] = float(value)
    items = sorted(points.items())
    if len(items) > MAX_REPORTED_POINTS:
        stride = math.ceil(len(items) / MAX_REPORTED_POINTS)
        items = items[::stride][: MAX_REPORTED_POINTS - 1] + [items[-1]]
    return items
