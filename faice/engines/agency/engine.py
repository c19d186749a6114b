"""The ``ccagency`` engine: submit the experiment to a CC-Agency and (with ``--wait``) follow it.

What is sent is plain RED (sweeps expanded into ``batches``, no faice-only keys, protected
keys normalised) with every ``{{variable}}`` already filled, so upstream CC-Agency accepts
it as well as ``faice agency serve``. stdout gets ``{"experimentId": ...}`` as JSON (upstream
printed a Python repr); progress goes to stderr.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from faice.engines.base import Engine
from faice.errors import EngineError, UsageError
from faice.files import dumps_json
from faice.pipeline.options import ExecRequest
from faice.pipeline.records import STREAM_FILES, BatchRecord, agency_batch_record, now_iso, pending_entry
from faice.pipeline.rundir import RunDir
from faice.red.experiment import Experiment
from faice.secrets import REDACTOR

if TYPE_CHECKING:
    from faice.engines.agency.client import AgencyClient


def agency_access(data: dict[str, Any], source: str) -> tuple[str, str, str]:
    """(url, username, password) from ``execution.settings.access``."""
    access = ((data.get("execution") or {}).get("settings") or {}).get("access")
    if not isinstance(access, dict) or not access.get("url"):
        raise EngineError(f"{source}: execution.settings.access.url: needed to send the experiment to CC-Agency")
    auth = access.get("auth")
    if not isinstance(auth, dict):
        raise EngineError(f"{source}: execution.settings.access.auth: needed to send the experiment to CC-Agency")
    username = auth.get("username", auth.get("_username"))
    password = auth.get("password", auth.get("_password"))
    if username is None or password is None:
        raise EngineError(f"{source}: execution.settings.access.auth: expected username and password")
    REDACTOR.add(password)
    return str(access["url"]), str(username), str(password)


def red_to_send(experiment: Experiment, *, metrics: bool = False) -> dict[str, Any]:
    """The plain RED document sent: sweeps expanded, protected keys normalised; the faice-only
    ``metrics`` section only to a server that announced it (faice's own). A search is sent as
    it is (its sweep and metrics): the server proposes its trials."""
    import copy

    from faice.red.search import is_search
    from faice.red.sweep import expanded_red
    from faice.secrets import normalise_protected_keys

    if is_search(experiment.data):
        return normalise_protected_keys(copy.deepcopy(experiment.data))
    return normalise_protected_keys(expanded_red(experiment.data, experiment.source, keep_faice_keys=metrics))


def check_search(experiment: Experiment, url: str, features: list[str]) -> None:
    """A search goes only to a server that announced it runs searches (faice's own, with Optuna)."""
    from faice.red.search import is_search

    if is_search(experiment.data) and "search" not in features:
        raise UsageError(f"{experiment.source}: sweep.search: the agency at {url} does not run searches "
                         "(it does not announce 'search' on /version)",
                         hint="faice's own server (faice agency serve, with faice[search] installed) runs them; "
                              "run the search on the local engine (execution.engine: ccfaice), or use a grid or "
                              "random sweep, which every agency runs")


def plan(experiment: Experiment, request: ExecRequest) -> dict[str, Any]:
    """What would be sent, and where (``--dry-run``, printed as JSON; nothing is sent)."""
    from faice.red.search import is_search

    url, _, _ = agency_access(experiment.data, experiment.source)
    red = red_to_send(experiment)
    plan: dict[str, Any] = {"agency": url, "batches": len(red.get("batches") or [None]), "red": red}
    if is_search(experiment.data):
        plan["batches"] = 0  # the server proposes the trials while the search runs
        plan["search"] = {"trials": experiment.data["sweep"]["search"].get("trials")}
    return plan


def run(experiment: Experiment, request: ExecRequest) -> int:
    """Submit (or, with ``--resume --outdir``, find the experiment the run directory knows);
    with ``--wait`` follow it, and with ``--outdir`` write its run directory from what the
    server reports, so ``faice results``, ``status`` and ``logs`` read it like a local run."""
    from faice.engines.agency.client import AgencyClient
    from faice.red.search import is_search

    url, username, password = agency_access(experiment.data, experiment.source)
    if request.options.resume and request.outdir is None:
        raise UsageError("--resume with execution.engine ccagency: give the --outdir of the run; "
                         "it knows the experiment the agency runs")
    client = AgencyClient(url, username, password)
    rundir, run_id, experiment_id = None, None, None
    if request.outdir is not None:
        rundir, run_id = RunDir.start(request.outdir, resume=request.options.resume)
        known = rundir.read_run() or {}
        if known.get("engine") == "ccagency" and isinstance(known.get("experimentId"), str):
            experiment_id = known["experimentId"]
            _say(f"faice: resuming: experiment {experiment_id} was submitted to {known.get('agency')} before; "
                 "following it instead of submitting again")
    header = {"runId": run_id, "engine": "ccagency", "agency": url, "source": experiment.source,
              "outdir": str(rundir.root) if rundir else None, "started": now_iso()}
    search = is_search(experiment.data)
    if experiment_id is None:
        features = client.features()
        check_search(experiment, url, features)
        red = red_to_send(experiment, metrics="metrics" in experiment.data and "metrics" in features)
        experiment_id = client.submit(
            red,
            disable_retry=request.disable_retry,
            disable_connector_validation=request.options.disable_connector_validation,
            key=f"faice-run-{run_id}" if run_id else None,
        )
        if rundir is not None:
            rundir.write_run({**header, "experimentId": experiment_id},
                             [pending_entry(b["_id"], b.get("batchesListIndex"), {})
                              for b in client.experiment_batches(experiment_id)])
    result: dict[str, Any] = {"experimentId": experiment_id}
    if request.json:
        result["batchIds"] = [b["_id"] for b in client.experiment_batches(experiment_id)]
    print(dumps_json(result), flush=True)
    if not request.wait:
        return 0
    from faice.engines.agency.follow import follow

    batches = follow(client, experiment_id, stream=sys.stderr, live=None if request.progress else False,
                     until=(lambda: search_over(client, experiment_id)) if search else None)
    if rundir is not None:
        save_run(rundir, client, batches, {**(rundir.read_run() or {}), **header, "experimentId": experiment_id,
                                           "finished": now_iso()})
        if search:
            save_trials(rundir, client, experiment_id)
    failed = []
    for batch in batches:
        if batch["state"] == "succeeded":
            continue
        detail = client.batch(batch["_id"])
        state = agency_batch_record(detail)["state"]
        if state == "stopped":  # faice's server stopped it early: a planned end, as on the local engine
            continue
        failed.append(batch)
        reason = next((h.get("debugInfo") for h in reversed(detail.get("history", [])) if h.get("debugInfo")), None)
        print(REDACTOR.redact(f"batch {batch['_id']} {state}" + (f": {reason}" if reason else "")), file=sys.stderr)
    return 1 if failed else 0


def save_run(rundir: RunDir, client: AgencyClient, batches: list[dict[str, Any]], header: dict[str, Any]) -> dict[str, Any]:
    """The run directory of a finished agency experiment: each batch's record (the one faice's
    server keeps, else built from the batch document), its stdout/stderr, and run.json."""
    from faice.engines.agency.client import AgencyHTTPError

    records = []
    for batch in batches:
        record = BatchRecord.from_dict(agency_batch_record(client.batch(batch["_id"])))
        for stream in STREAM_FILES:
            try:
                text = client.log(record.batch_id, stream)
            except AgencyHTTPError:  # 404: nothing recorded for this stream
                continue
            rundir.write_stream(record.batch_id, stream, text)
        rundir.write_record(record)
        records.append(record)
    return rundir.write_run(header, [r.entry() for r in records])


def search_over(client: AgencyClient, experiment_id: str) -> bool:
    """Whether the server's search of the experiment proposes no more trials."""
    state = (client.experiment(experiment_id).get("search") or {}).get("state")
    return state != "running"


def save_trials(rundir: RunDir, client: AgencyClient, experiment_id: str) -> None:
    """The search's trial log, as the server keeps it (each trial naming its batch), into the
    run directory: ``faice results`` lists the trials in order with their origin."""
    from faice.pipeline.search import LOG_FILE, search_dir

    events = client.request("GET", f"/experiments/{experiment_id}/trials")
    directory = search_dir(rundir.root)
    directory.mkdir(parents=True, exist_ok=True)
    text = "".join(dumps_json(event) + "\n" for event in events if isinstance(event, dict))
    (directory / LOG_FILE).write_text(text, encoding="utf-8")


def _say(message: str) -> None:
    print(REDACTOR.redact(message), file=sys.stderr, flush=True)

# The server runs, retries (its own attempts; --disable-retry) and limits the batches; the
# local pool's flags (--parallel, --timeout, --retries, --fail-fast, --max-failures, ...) are
# refused rather than ignored.
ENGINE = Engine("ccagency", frozenset({
    "outdir", "dry_run", "wait", "resume", "disable_retry",
}), run, plan)
