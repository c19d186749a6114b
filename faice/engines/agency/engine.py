"""The ``ccagency`` engine: submit the experiment to a CC-Agency and (with ``--wait``) follow it.

What is sent is plain RED (sweeps expanded into ``batches``, no faice-only keys, protected
keys normalised) with every ``{{variable}}`` already filled, so upstream CC-Agency accepts
it as well as ``faice agency serve``. stdout gets ``{"experimentId": ...}`` as JSON (upstream
printed a Python repr); progress goes to stderr.
"""

from __future__ import annotations

import sys
from typing import Any

from faice.engines import ExecRequest
from faice.errors import EngineError
from faice.files import dumps_json
from faice.red.experiment import Experiment
from faice.secrets import REDACTOR


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


def red_to_send(experiment: Experiment) -> dict[str, Any]:
    from faice.red.sweep import expanded_red
    from faice.secrets import normalise_protected_keys

    return normalise_protected_keys(expanded_red(experiment.data, experiment.source))


def run(experiment: Experiment, request: ExecRequest) -> int:
    from faice.engines.agency.client import AgencyClient

    url, username, password = agency_access(experiment.data, experiment.source)
    red = red_to_send(experiment)
    if request.dry_run:
        plan = {"agency": url, "batches": len(red.get("batches") or [None]), "red": red}
        print(REDACTOR.redact(dumps_json(REDACTOR.redact_data(plan), indent=2)))
        return 0
    client = AgencyClient(url, username, password)
    experiment_id = client.submit(
        red,
        disable_retry=request.disable_retry,
        disable_connector_validation=request.options.disable_connector_validation,
    )
    result: dict[str, Any] = {"experimentId": experiment_id}
    if request.json:
        result["batchIds"] = [b["_id"] for b in client.experiment_batches(experiment_id)]
    print(dumps_json(result), flush=True)
    if not request.wait:
        return 0
    from faice.engines.agency.follow import follow

    batches = follow(client, experiment_id, stream=sys.stderr, live=None if request.progress else False)
    failed = [b for b in batches if b["state"] != "succeeded"]
    for batch in failed:
        detail = client.batch(batch["_id"])
        reason = next((h.get("debugInfo") for h in reversed(detail.get("history", [])) if h.get("debugInfo")), None)
        print(REDACTOR.redact(f"batch {batch['_id']} {batch['state']}" + (f": {reason}" if reason else "")), file=sys.stderr)
    return 1 if failed else 0
