"""``sweep.search`` on faice's agency server: the server runs the search loop of an experiment.

The loop is every engine's (:func:`faice.pipeline.search.drive` over a
:class:`faice.pipeline.search.Search`: Optuna's ask/tell, the trial log ``search/trials.jsonl``),
run by a thread of the server per running search, its log kept server-side under
``<workdir>/searches/<experiment>``, so a client that disconnects (or was never waiting) stops
nothing. The agency is its :class:`~faice.pipeline.search.TrialRunner` (:class:`AgencyTrials`):

* a proposed trial becomes a ``registered`` batch of the experiment (its index the trial's
  number; inputs and outputs the stored template, connector credentials still sealed, filled
  with the trial's parameters), which the dispatcher runs like any batch, at most
  ``sweep.maxConcurrent`` (default: the server's ``--parallel``) at a time;
* a trial batch that became final is handed back with faice's record and the objective series
  kept in its document, so the sampler learns its objective (stopped trials teach it too);
* the search ends when its budget is spent and nothing is in flight (``search.state``
  ``finished`` in the experiment document), or after a user cancelled one of its trials
  (``cancelled``: no new trials, those not started yet cancelled, running ones run to their end).

A restarted server replays the log (told trials teach the new study, the budget counts them);
a trial that was in flight is proposed again with the same parameters and takes up its batch
(retried, as the dispatcher retries every batch a restart interrupted).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

from faice.agency.ids import new_id
from faice.agency.store import FINAL_STATES, Store, registered_batch

log = logging.getLogger("faice.agency")
SEARCHES_DIR = "searches"
RUNNING = "running"
POLL_S = 1.0  # how often a search looks at its trials in flight (sooner when the dispatcher wakes it)


def announced() -> bool:
    """Whether this server can run searches (Optuna installed: ``faice[search]``)."""
    try:
        import optuna  # noqa: F401
    except ImportError:
        return False
    return True


def search_documents(data: dict[str, Any], experiment: dict[str, Any], template: dict[str, Any]) -> None:
    """What a search experiment keeps beyond CC-Agency's fields (``template``: the sealed
    inputs and outputs its trials are filled from)."""
    sweep = data["sweep"]
    experiment["sweep"] = sweep
    experiment["template"] = template
    experiment["search"] = {"state": RUNNING, "trials": sweep["search"]["trials"], "proposed": 0, "told": 0}


class _Stopped(Exception):
    """The server is stopping: the search's thread ends (its log is replayed at the next start)."""


class SearchDriver:
    """The running searches of one server, a thread each."""

    def __init__(self, store: Store, workdir: Path, *, parallel: int, on_end: Any = None, on_batch: Any = None) -> None:
        self.store = store
        self.dir = Path(workdir) / SEARCHES_DIR
        self.parallel = parallel
        self.on_end = on_end  # called with the experiment id when a search ended
        self.on_batch = on_batch  # called when a search registered a batch (the dispatcher wakes)
        self.stopping = threading.Event()
        self._threads: dict[str, threading.Thread] = {}
        self._trials: dict[str, AgencyTrials] = {}
        self._lock = threading.Lock()

    def start(self) -> None:
        """At the server's start: every search still running goes on."""
        for experiment in self.store.list("experiments", {}, ascending=True):
            if (experiment.get("search") or {}).get("state") == RUNNING:
                self.add(experiment["_id"])

    def add(self, experiment_id: str) -> None:
        """A search was submitted: its loop starts."""
        with self._lock:
            if self.stopping.is_set() or experiment_id in self._threads:
                return
            thread = threading.Thread(target=self._run, args=(experiment_id,), name=f"search-{experiment_id}",
                                      daemon=True)
            self._threads[experiment_id] = thread
        thread.start()

    def wake(self, experiment_id: str) -> None:
        """A batch of the experiment ended: its search looks at once."""
        with self._lock:
            trials = self._trials.get(experiment_id)
        if trials is not None:
            trials.event.set()

    def close(self, timeout: float = 10.0) -> None:
        self.stopping.set()
        with self._lock:
            threads = list(self._threads.values())
            for trials in self._trials.values():
                trials.event.set()
        for thread in threads:
            thread.join(timeout)

    # ------------------------------------------------------------ one search
    def _run(self, experiment_id: str) -> None:
        from faice.pipeline.search import drive

        trials = None
        try:
            experiment = self.store.experiment(experiment_id)
            if experiment is None:
                return
            trials = self._open(experiment)
            with self._lock:
                self._trials[experiment_id] = trials
            drive(trials.search, trials, concurrent=trials.concurrency or self.parallel)
            trials.end()
            if self.on_end is not None:
                self.on_end(experiment_id)
        except _Stopped:
            pass
        except Exception:
            log.exception("the search of experiment %s failed", experiment_id)
        finally:
            if trials is not None:
                trials.search.close()
            with self._lock:
                self._trials.pop(experiment_id, None)
                self._threads.pop(experiment_id, None)

    def _open(self, experiment: dict[str, Any]) -> AgencyTrials:
        """The experiment's search: new, or replayed from its log after a restart. The log's
        told trials teach the new study; a trial proposed but never told is proposed again
        (the same parameters), and its batch, still in the store, is taken up again instead of
        registering a second one."""
        from faice.pipeline.search import LOG_FILE, Search, read_log, search_dir
        from faice.red.experiment import Experiment
        from faice.red.metrics import MetricsSpec

        experiment_id = experiment["_id"]
        outdir = self.dir / experiment_id
        resume = (search_dir(outdir) / LOG_FILE).exists()
        untold = {t["trial"] for t in read_log(outdir)[1] if t.get("sampler") is None} if resume else set()
        template = experiment.get("template") or {}
        data: dict[str, Any] = {key: experiment[key] for key in ("redVersion", "cli", "container", "sweep", "metrics")
                                if key in experiment}
        data.update(inputs=template.get("inputs") or {}, outputs=template.get("outputs") or {})
        search = Search(Experiment(f"experiment {experiment_id}", data, []), MetricsSpec.from_mapping(experiment["metrics"]),
                        outdir, resume=resume)
        trials = AgencyTrials(self, experiment, search)
        trials.told = search.reused
        for batch in self.store.list("batches", {"experimentId": experiment_id}, ascending=True):
            trials.proposed += isinstance(batch.get("trial"), int)
            if batch.get("trial") in untold:
                trials.orphans.setdefault(_key(batch.get("parameters")), []).append(batch["_id"])
        return trials


def _key(parameters: Any) -> str:
    return json.dumps(parameters, sort_keys=True, default=str)


class AgencyTrials:
    """Where :func:`faice.pipeline.search.drive` runs one experiment's trials: as batches of the
    experiment, run by the dispatcher (a :class:`faice.pipeline.search.TrialRunner`)."""

    def __init__(self, driver: SearchDriver, experiment: dict[str, Any], search: Any) -> None:
        self.driver = driver
        self.store = driver.store
        self.experiment = experiment
        self.search = search
        concurrency = experiment["sweep"].get("maxConcurrent")
        self.concurrency = concurrency if isinstance(concurrency, int) and concurrency > 0 else None
        self.in_flight: dict[str, str] = {}  # agency batch id → the trial's batch id
        self.orphans: dict[str, list[str]] = {}  # after a restart: untold trials' batches by parameters
        self.state = RUNNING
        self.reason: str | None = None
        self.proposed = 0
        self.told = 0
        self.event = threading.Event()

    # -- TrialRunner

    def start(self, batch: Any) -> None:
        """The proposed trial as a registered batch of the experiment (or, after a restart, the
        batch of its first proposal taken up again)."""
        found = self.orphans.get(_key(batch.parameters))
        if found:
            batch_id = found.pop(0)
            self.store.update_batch(batch_id, trial=batch.index)
        else:
            batch_id = new_id()
            self.store.add_batches([registered_batch(batch_id, self.experiment, batch.index, batch.inputs, batch.outputs,
                                                     time.time(), trial=batch.index, parameters=batch.parameters)])
            self.proposed += 1
        self.in_flight[batch_id] = batch.id
        self._save()
        if self.driver.on_batch is not None:
            self.driver.on_batch()

    def ended(self) -> list[Any]:
        """The trials whose batches became final (waits up to POLL_S for one)."""
        from faice.pipeline.records import BatchRecord, BatchState, agency_batch_record
        from faice.pipeline.search import Ended

        if self.driver.stopping.is_set():
            raise _Stopped
        if self.orphans:  # batches of untold trials no proposal took up (none expected)
            for batch_id in [b for found in self.orphans.values() for b in found]:
                self.store.transition(batch_id, "cancelled", expect={"registered", "scheduled", "processing"},
                                      debug_info="the agency restarted during the search; this trial was proposed again")
            self.orphans.clear()
        ends = []
        for batch_id, trial_batch in list(self.in_flight.items()):
            doc = self.store.batch(batch_id)
            if doc is None or doc["state"] not in FINAL_STATES:
                continue
            record = BatchRecord.from_dict(agency_batch_record(doc))
            series = doc.get("objectiveSeries") if isinstance(doc.get("objectiveSeries"), list) else None
            ends.append(Ended(trial_batch, record, series))
            del self.in_flight[batch_id]
            self.told += 1
            if record.state == BatchState.CANCELLED and self.state == RUNNING:
                self.state, self.reason = "cancelled", record.message or "cancelled"
        if self.state == "cancelled":
            for batch_id in self.in_flight:  # not started yet: cancelled with the search
                self.store.transition(batch_id, "cancelled", expect={"registered"},
                                      debug_info=f"the search was cancelled ({self.reason})")
        if ends:
            self._save()
            return ends
        self.event.wait(POLL_S)
        self.event.clear()
        return []

    def stop_starting(self) -> bool:
        return self.state != RUNNING or self.driver.stopping.is_set()

    # -- progress

    def end(self) -> None:
        """Nothing in flight and nothing more to propose: the search is over."""
        if self.state == RUNNING:
            self.state = "finished"
        self._save()

    def _save(self) -> None:
        state: dict[str, Any] = {"state": self.state, "trials": self.search.spec.trials, "proposed": self.proposed,
                                 "told": self.told}
        if self.reason:
            state["reason"] = self.reason
        if self.experiment.get("search") != state:
            self.store.update_experiment(self.experiment["_id"], search=state)
            self.experiment["search"] = state


def trial_events(workdir: Path, store: Store, experiment_id: str) -> list[dict[str, Any]]:
    """The search log of an experiment as the client writes it into its run directory: each
    event's ``batch`` the agency's batch id (the server's log names the trials' own ids)."""
    from faice.pipeline.search import LOG_FILE, MAX_LOG_BYTES, search_dir

    path = search_dir(Path(workdir) / SEARCHES_DIR / experiment_id) / LOG_FILE
    try:
        if path.stat().st_size > MAX_LOG_BYTES:
            return []
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    ids = {b["trial"]: b["_id"] for b in store.list("batches", {"experimentId": experiment_id})
           if isinstance(b.get("trial"), int)}
    events = []
    for line in text.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if not isinstance(event, dict):
            continue
        if "batch" in event:
            if event.get("trial") not in ids:
                continue  # proposed but not registered (the server stopped in between)
            event["batch"] = ids[event["trial"]]
        events.append(event)
    return events
