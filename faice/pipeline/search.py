"""``sweep.search`` while a run goes: Optuna's ask/tell, one trial per batch.

A free worker asks :meth:`Search.propose` for the next batch: the sampler proposes the
parameters from every trial told so far, the trials in flight included (TPE's constant liar:
parallel proposals differ). The trial becomes a batch like any other (content-derived id,
record, metrics, results). When it ends :meth:`Search.tell` gives the sampler its objective
series as intermediate values and its end: ``complete`` with the objective, ``pruned`` when
an early-stopping rule stopped it (TPE still learns from a stopped trial's last value),
``fail`` otherwise. Nothing of this runs in the image: the values come from the metrics files.

The search is kept in the run directory as an append-only log, ``search/trials.jsonl`` (one
line when a trial is proposed, one when it is told, with its intermediate values). The study
itself lives in memory (Optuna's journal storage fsyncs every operation, about ten a trial:
too slow for thousands of trials); ``--resume`` replays the told trials into a new study
(``add_trial``) and continues; a trial that was proposed but never told (the run was
interrupted) is proposed again first, with the same parameters, so the same batch id.

:func:`drive` is the one search loop of every engine: it asks while fewer than ``maxConcurrent``
trials are in flight, hands each trial's batch to the engine (:class:`TrialRunner`: the local
engine runs it in a thread, packed Slurm adds it to the claim queue of its workers) and tells
the sampler what each finished trial's record says.
"""

from __future__ import annotations

import json
import math
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from faice.errors import EngineError, UsageError
from faice.files import open_regular
from faice.pipeline.metrics import thinned
from faice.red.experiment import Batch, Experiment
from faice.red.metrics import MetricsSpec
from faice.red.search import MAX_SEED, SearchSpec
from faice.red.sweep import search_batch

if TYPE_CHECKING:
    from faice.pipeline.records import BatchRecord

SEARCH_DIR = "search"
LOG_FILE = "trials.jsonl"
MAX_REPORTED_POINTS = 200  # intermediate values per trial (evenly thinned; the last one kept)
MAX_LOG_BYTES = 256 * 1024 * 1024  # a log larger than this is not a search faice wrote
INSTALL_HINT = "pip install 'faice[search]'"
# Extra packages some algorithms need, beyond Optuna itself.
NEEDS = {"cmaes": ("cmaes", "faice[search]"), "qmc": ("scipy", "faice[search]"),
         "gp": ("torch", "PyTorch (pip install torch)")}
TOLD = {"complete", "pruned", "fail"}


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


def read_log(outdir: Path) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """(the newest ``search`` header, the trials in order) of a run's search log; (None, [])
    when the run is no search. Each trial: trial, batch, origin, parameters, state, value,
    sampler (complete/pruned/fail; None while untold), message, intermediate."""
    path = search_dir(outdir) / LOG_FILE
    try:
        with open_regular(path, beneath=Path(outdir)) as handle:  # no FIFO, no link out of the run
            data = handle.read(MAX_LOG_BYTES + 1)
    except OSError:
        return None, []
    if len(data) > MAX_LOG_BYTES:
        return None, []
    text = data.decode("utf-8", errors="replace")
    header: dict[str, Any] | None = None
    trials: dict[int, dict[str, Any]] = {}
    for line in text.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue  # a line cut short by a crash
        if not isinstance(event, dict):
            continue
        kind, number = event.get("event"), event.get("trial")
        if kind == "search":
            header = event
        elif kind == "asked" and isinstance(number, int):
            trials[number] = {"trial": number, "batch": event.get("batch"), "origin": event.get("origin"),
                              "parameters": event.get("parameters") or {}, "state": "running", "value": None,
                              "sampler": None, "message": None, "intermediate": []}
        elif kind == "told" and number in trials:
            trials[number].update({key: event.get(key) for key in ("state", "value", "sampler", "message")})
            trials[number]["intermediate"] = event.get("intermediate") or []
    return header, [trials[n] for n in sorted(trials)]


def distributions(optuna: Any, parameters: dict[str, tuple[str, list[Any]]]) -> dict[str, Any]:
    """Optuna's distributions of the search space (sweep.random's kinds)."""
    made = {}
    for name, (kind, arguments) in parameters.items():
        if kind in ("uniform", "loguniform"):
            made[name] = optuna.distributions.FloatDistribution(float(arguments[0]), float(arguments[1]),
                                                                log=kind == "loguniform")
        elif kind == "randint":
            made[name] = optuna.distributions.IntDistribution(int(arguments[0]), int(arguments[1]))
        else:
            made[name] = optuna.distributions.CategoricalDistribution(list(arguments))
    return made


class Search:
    """The search of one run: its study, the trials in flight, the budget."""

    def __init__(self, experiment: Experiment, metrics: MetricsSpec, outdir: Path, *, resume: bool) -> None:
        self.spec = SearchSpec.from_sweep(experiment.data["sweep"])
        self.optuna = optuna = require_optuna(self.spec.algorithm)
        self.data = experiment.data
        self.metrics = metrics
        self.dir = search_dir(outdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        header, previous = read_log(outdir) if resume else (None, [])
        goal = metrics.objective.goal
        if header is not None and (header.get("objective") or {}).get("goal") not in (None, goal):
            raise EngineError(f"{self.dir}: the search recorded there has the goal {header['objective']['goal']}; "
                              f"the RED file's objective has {goal}")
        self.distributions = distributions(self.optuna, self.spec.parameters)
        self._lock = threading.Lock()
        self._in_flight: dict[str, Any] = {}  # batch id → (optuna Trial, our trial number)
        self._ids: set[str] = set()
        self._log = open(self.dir / LOG_FILE, "a" if resume else "w", encoding="utf-8")  # noqa: SIM115
        self.study = optuna.create_study(direction="maximize" if goal == "max" else "minimize",
                                         sampler=optuna.samplers.RandomSampler(seed=0))
        self.reused = self._replay(self._told_late(previous, outdir))
        self._next = max((t["trial"] for t in previous), default=-1) + 1
        # A resumed search goes on with fresh random numbers (the same seed would repeat its start).
        self.study.sampler = self._sampler((self.spec.seed + self._next) % (MAX_SEED + 1))
        self._asked = self.reused
        self._write({"event": "search", "algorithm": self.spec.algorithm, "budget": self.spec.trials,
                     "seed": self.spec.seed, "objective": metrics.objective.as_dict(),
                     "parameters": {name: {kind: arguments} for name, (kind, arguments) in self.spec.parameters.items()}})

    def close(self) -> None:
        self._log.close()

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

    def _told_late(self, previous: list[dict[str, Any]], outdir: Path) -> list[dict[str, Any]]:
        """Trials proposed but never told whose batch ended anyway (the driver died while
        Slurm workers ran them to their end): told now, from their records, not run again."""
        from faice.pipeline.records import BatchState
        from faice.pipeline.rundir import RunDir

        rundir = RunDir(outdir)
        for row in previous:
            if row.get("sampler") in TOLD or not isinstance(row.get("batch"), str):
                continue
            record = rundir.read_record(row["batch"])
            if record is None or record.state not in (BatchState.SUCCEEDED, BatchState.FAILED, BatchState.STOPPED):
                continue
            value = objective_value(record)
            points = _thinned(objective_series(rundir, row["batch"], self.metrics.objective.name) or [])
            row.update(state=record.state.value, value=_finite(value), sampler=_told_as(record.state.value, value),
                       message=record.message, intermediate=[list(p) for p in points])
            self._write({"event": "told", "trial": row["trial"], **{key: row[key] for key in (
                "batch", "state", "value", "sampler", "message", "intermediate")}})
        return previous

    def _replay(self, previous: list[dict[str, Any]]) -> int:
        """Told trials go into the new study and count towards the budget; one proposed but
        never told is proposed again (the same parameters, so the same batch)."""
        optuna = self.optuna
        states = {"complete": optuna.trial.TrialState.COMPLETE, "pruned": optuna.trial.TrialState.PRUNED,
                  "fail": optuna.trial.TrialState.FAIL}
        finished = 0
        for row in previous:
            params = {k: v for k, v in (row.get("parameters") or {}).items() if k in self.distributions}
            if row.get("sampler") not in TOLD or row.get("state") in ("cancelled", "interrupted"):
                if len(params) == len(self.distributions):
                    self.study.enqueue_trial(params, user_attrs={"origin": "again"})
                continue
            finished += 1
            self._ids.add(str(row.get("batch")))
            distributions = {k: self.distributions[k] for k in params}
            if any(not distributions[k]._contains(distributions[k].to_internal_repr(v)) for k, v in params.items()):
                continue  # the space changed since: the trial counts, but cannot teach the sampler
            value = row.get("value") if row.get("sampler") == "complete" else None
            self.study.add_trial(optuna.trial.create_trial(
                params=params, distributions=distributions, value=value, state=states[str(row["sampler"])],
                intermediate_values={int(s): float(v) for s, v in row.get("intermediate") or []},
                user_attrs={"batch": row.get("batch"), "origin": row.get("origin")}))
        self._rows_before = [row for row in previous if str(row.get("batch")) in self._ids]
        return finished

    def finished_batches(self) -> list[str]:
        """The batch ids of the trials a resumed search keeps."""
        return [str(row["batch"]) for row in self._rows_before]

    # -- ask and tell

    @property
    def next_number(self) -> int:
        """The number the next proposed trial gets."""
        return self._next

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
            number = self._next
            self._next += 1
            batch = search_batch(self.data, number, dict(trial.params))
            base, count = batch.id, 0
            while batch.id in self._ids:  # the same parameters proposed twice (choices only)
                count += 1
                batch.id = f"{base}-{count}"
            self._ids.add(batch.id)
            self._in_flight[batch.id] = (trial, number)
            self._asked += 1
            self._write({"event": "asked", "trial": number, "batch": batch.id, "origin": origin,
                         "parameters": batch.parameters})
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
            found = self._in_flight.pop(batch_id, None)
            if found is None:
                return
            trial, number = found
            points = _thinned(series or [])
            for step, point in points:
                trial.report(point, step)
            told = _told_as(state, value)
            if told == "complete":
                self.study.tell(trial, value)
            elif told == "pruned":
                self.study.tell(trial, state=states.PRUNED)
            else:
                if state in ("cancelled", "interrupted"):
                    self._asked -= 1  # not counted: proposed again on --resume
                self.study.tell(trial, state=states.FAIL)
            self._write({"event": "told", "trial": number, "batch": batch_id, "state": state,
                         "value": _finite(value), "sampler": told, "message": message,
                         "intermediate": [list(p) for p in points]})

    def tell_record(self, batch_id: str, record: BatchRecord, series: Sequence[Sequence[Any]] | None) -> None:
        """A trial's batch ended with ``record``: the sampler learns its objective (as the
        record's metrics say) and its series of intermediate values."""
        self.tell(batch_id, record.state.value, objective_value(record), series, record.message)

    def _write(self, event: dict[str, Any]) -> None:
        """One line of the log, flushed (not fsynced: a line lost in a crash only re-runs a trial)."""
        self._log.write(json.dumps(event, sort_keys=True, allow_nan=False, default=str) + "\n")
        self._log.flush()


def objective_value(record: BatchRecord) -> float | None:
    """The objective's value as the record's metrics say, or None."""
    objective = (record.metrics or {}).get("objective") or {}
    value = objective.get("value") if isinstance(objective, dict) else None
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _told_as(state: str, value: float | None) -> str:
    """What the sampler is told of a trial whose batch ended in ``state`` with ``value``."""
    if state == "succeeded" and _finite(value) is not None:
        return "complete"
    return "pruned" if state == "stopped" else "fail"


def _thinned(series: Sequence[Sequence[Any]]) -> list[tuple[int, float]]:
    """At most MAX_REPORTED_POINTS finite (step, value) pairs with distinct integer steps."""
    points: dict[int, float] = {}
    for step, value in series:
        if isinstance(step, (int, float)) and isinstance(value, (int, float)) and math.isfinite(value):
            points[int(step)] = float(value)
    return thinned(sorted(points.items()), MAX_REPORTED_POINTS)


# ---------------------------------------------------------------------------- the search loop


@dataclass
class Ended:
    """A trial whose batch ended: its record and its objective's whole series (None when the
    batch left none), as the engine read them."""

    batch_id: str
    record: BatchRecord
    series: Sequence[Sequence[Any]] | None = None


class TrialRunner(Protocol):
    """Where an engine runs the trials :func:`drive` proposes."""

    def start(self, batch: Batch) -> None:
        """Run (or queue) the trial's batch; return at once."""

    def ended(self) -> list[Ended]:
        """The trials that ended since the last call; may wait a little (a poll interval) for one."""

    def stop_starting(self) -> bool:
        """True once no new trial should start (cancelled, too many failures, no worker left)."""


def drive(search: Search, runner: TrialRunner, *, concurrent: int) -> int:
    """The search loop of every engine: propose while fewer than ``concurrent`` trials are in
    flight and the budget lasts, tell the sampler each trial that ended; returns once no trial
    is in flight and none may start. Returns the number of trials started."""
    in_flight: set[str] = set()
    started = 0
    while True:
        while len(in_flight) < max(1, concurrent) and not runner.stop_starting():
            batch = search.propose()
            if batch is None:
                break
            in_flight.add(batch.id)
            started += 1
            runner.start(batch)
        if not in_flight:
            return started
        for end in runner.ended():
            if end.batch_id in in_flight:
                in_flight.discard(end.batch_id)
                search.tell_record(end.batch_id, end.record, end.series)


def objective_series(rundir: Any, batch_id: str, name: str) -> list | None:
    """A finished batch's whole series of the objective ``name`` (metrics.json), or None."""
    data = rundir.read_metrics(batch_id)
    series = ((data or {}).get("series") or {}).get(name) if isinstance(data, dict) else None
    return series if isinstance(series, list) else None
