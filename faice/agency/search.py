"""``sweep.search`` on faice's agency server: the server runs the search loop of an experiment.

The loop is the local engine's (:class:`faice.pipeline.search.Search`: Optuna's ask/tell, the
trial log ``search/trials.jsonl``), kept server-side under ``<workdir>/searches/<experiment>``,
so a client that disconnects (or was never waiting) stops nothing. Each round of the
dispatcher, :meth:`SearchDriver.step`:

* tells the sampler every trial batch that became final (its record's state and objective,
  the objective series kept in its document: stopped trials teach it too);
* proposes new trials while fewer than ``sweep.maxConcurrent`` (default: the server's
  ``--parallel``) are in flight, each a ``registered`` batch of the experiment (its index the
  trial's number; inputs and outputs the stored template, connector credentials still sealed,
  filled with the trial's parameters);
* ends the search when its budget is spent and nothing is in flight (``search.state``
  ``finished`` in the experiment document), or when a user cancelled one of its trials
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
from faice.agency.store import FINAL_STATES, Store

log = logging.getLogger("faice.agency")
SEARCHES_DIR = "searches"
RUNNING = "running"


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


class SearchDriver:
    """The searches of one server; :meth:`step` is called by the dispatcher's loop."""

    def __init__(self, store: Store, workdir: Path, *, parallel: int, on_end: Any = None) -> None:
        self.store = store
        self.dir = Path(workdir) / SEARCHES_DIR
        self.parallel = parallel
        self.on_end = on_end  # called with the experiment id when a search ended
        self._searches: dict[str, _Running] = {}
        self._known: set[str] | None = None  # experiment ids of running searches
        self._lock = threading.Lock()

    def add(self, experiment_id: str) -> None:
        """A search was submitted: its loop starts at the next round."""
        with self._lock:
            if self._known is not None:
                self._known.add(experiment_id)

    def _running_ids(self) -> list[str]:
        with self._lock:
            if self._known is None:  # the first round after a start: every search still running
                self._known = {e["_id"] for e in self.store.list("experiments", {})
                               if (e.get("search") or {}).get("state") == RUNNING}
            return sorted(self._known)

    def step(self) -> bool:
        """One round over every running search; True when a batch was added."""
        added = False
        for experiment_id in self._running_ids():
            try:
                added |= self._step(experiment_id)
            except Exception:  # one broken search must not stop the others or the dispatcher
                log.exception("search of experiment %s failed a round", experiment_id)
        return added

    def close(self) -> None:
        with self._lock:
            running, self._searches = list(self._searches.values()), {}
        for each in running:
            each.search.close()

    # ------------------------------------------------------------ one search
    def _step(self, experiment_id: str) -> bool:
        experiment = self.store.experiment(experiment_id)
        if experiment is None or (experiment.get("search") or {}).get("state") != RUNNING:
            self._forget(experiment_id)
            return False
        running = self._searches.get(experiment_id) or self._open(experiment)
        batches = self.store.list("batches", {"experimentId": experiment_id}, ascending=True)
        cancelled_by = self._tell(running, batches)
        if cancelled_by is not None and running.state == RUNNING:
            running.state = "cancelled"
            running.reason = cancelled_by
        if running.state == "cancelled":
            self._cancel_waiting(running)
        added = False
        limit = running.concurrency or self.parallel
        while running.state == RUNNING and len(running.in_flight) < limit:
            batch = running.search.propose()
            if batch is None:
                break
            if not self._adopt(running, batch):
                self._register(experiment, running, batch)
            added = True
        if running.orphans:
            self._drop_orphans(running)
        if running.in_flight or (running.state == RUNNING and running.search.remaining):
            self._save(experiment, running)
            return added
        self._end(experiment, running)
        return added

    def _open(self, experiment: dict[str, Any]) -> _Running:
        """The experiment's search: new, or replayed from its log after a restart. The log's
        told trials teach the new study; a trial proposed but never told is proposed again
        (the same parameters), and its batch, still in the store, is taken up again instead of
        registering a second one (:meth:`_adopt`)."""
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
        concurrency = experiment["sweep"].get("maxConcurrent")
        running = _Running(search, concurrency if isinstance(concurrency, int) and concurrency > 0 else None)
        running.told = search.reused
        for batch in self.store.list("batches", {"experimentId": experiment_id}, ascending=True):
            running.proposed += isinstance(batch.get("trial"), int)
            if batch.get("trial") in untold:
                running.orphans.setdefault(_key(batch.get("parameters")), []).append(batch["_id"])
        self._searches[experiment_id] = running
        return running

    def _cancel_waiting(self, running: _Running) -> None:
        """A cancelled search: its trials that did not start yet are cancelled too (e.g. one
        proposed while ``faice cancel`` went through the experiment's batches)."""
        for batch_id in list(running.in_flight):
            self.store.transition(batch_id, "cancelled", expect={"registered"},
                                  debug_info=f"the search was cancelled ({running.reason})")

    def _adopt(self, running: _Running, batch: Any) -> bool:
        """A trial proposed again after a restart takes up the batch of its first proposal."""
        found = running.orphans.get(_key(batch.parameters))
        if not found:
            return False
        batch_id = found.pop(0)
        self.store.update_batch(batch_id, trial=batch.index)
        running.in_flight[batch_id] = batch.id
        return True

    def _drop_orphans(self, running: _Running) -> None:
        """Batches of untold trials that no proposal took up (none expected): cancelled."""
        for batch_id in [b for found in running.orphans.values() for b in found]:
            self.store.transition(batch_id, "cancelled", expect={"registered", "scheduled", "processing"},
                                  debug_info="the agency restarted during the search; this trial was proposed again")
        running.orphans.clear()

    def _tell(self, running: _Running, batches: list[dict[str, Any]]) -> str | None:
        """Tell the sampler every trial that ended; who cancelled one, if a user did."""
        from faice.pipeline.records import agency_batch_record

        cancelled_by = None
        for batch in batches:
            trial_batch = running.in_flight.get(batch["_id"])
            if trial_batch is None or batch["state"] not in FINAL_STATES:
                continue
            record = agency_batch_record(batch)
            state = str(record.get("state"))
            objective = (record.get("metrics") or {}).get("objective") or {}
            value = objective.get("value") if isinstance(objective, dict) else None
            series = batch.get("objectiveSeries") if isinstance(batch.get("objectiveSeries"), list) else None
            running.search.tell(trial_batch, state, value if isinstance(value, (int, float)) else None, series,
                                record.get("message"))
            del running.in_flight[batch["_id"]]
            running.told += 1
            if state == "cancelled":
                cancelled_by = record.get("message") or "cancelled"
        return cancelled_by

    def _register(self, experiment: dict[str, Any], running: _Running, batch: Any) -> None:
        """The proposed trial as a registered batch of the experiment."""
        now = time.time()
        batch_id = new_id()
        doc = {
            "_id": batch_id, "experimentId": experiment["_id"], "username": experiment["username"],
            "registrationTime": now, "state": "registered", "batchesListIndex": batch.index,
            "protectedKeysVoided": False, "notificationsSent": False, "node": None, "attempts": 0,
            "history": [{"state": "registered", "time": now, "debugInfo": None, "node": None, "ccagent": None}],
            "inputs": batch.inputs, "outputs": batch.outputs, "usedGPUs": None, "mount": False,
            "trial": batch.index, "parameters": batch.parameters,
        }
        self.store.add_batches([doc])
        running.in_flight[batch_id] = batch.id
        running.proposed += 1

    def _save(self, experiment: dict[str, Any], running: _Running) -> None:
        state = {"state": running.state, "trials": running.search.spec.trials, "proposed": running.proposed,
                 "told": running.told}
        if running.reason:
            state["reason"] = running.reason
        if experiment.get("search") != state:
            self.store.update_experiment(experiment["_id"], search=state)

    def _end(self, experiment: dict[str, Any], running: _Running) -> None:
        """Nothing in flight and nothing more to propose: the search is over."""
        if running.state == RUNNING:
            running.state = "finished"
        self._save(experiment, running)
        self._forget(experiment["_id"])
        if self.on_end is not None:
            self.on_end(experiment["_id"])

    def _forget(self, experiment_id: str) -> None:
        with self._lock:
            if self._known is not None:
                self._known.discard(experiment_id)
        running = self._searches.pop(experiment_id, None)
        if running is not None:
            running.search.close()


def _key(parameters: Any) -> str:
    return json.dumps(parameters, sort_keys=True, default=str)


class _Running:
    """One running search: its Search, the trial batches in flight (agency id → trial batch id)."""

    def __init__(self, search: Any, concurrency: int | None) -> None:
        self.search = search
        self.concurrency = concurrency
        self.in_flight: dict[str, str] = {}
        self.orphans: dict[str, list[str]] = {}  # after a restart: untold trials' batches by parameters
        self.state = RUNNING
        self.reason: str | None = None
        self.proposed = 0
        self.told = 0


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
