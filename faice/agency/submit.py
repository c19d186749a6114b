"""``POST /red``: the checks in upstream's order, then the experiment and batch documents.

Every check raises :class:`BadRequest` with upstream's message (a 400 whose body is a JSON
string), so clients written against CC-Agency see the same answers.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any

from faice.agency.ids import new_id
from faice.agency.store import registered_batch
from faice.agency.vault import Vault, seal

INVALID_RED = "Given RED data is invalid. Consider using the FAICE commandline tools for local validation."
_VARIABLE = re.compile(r"\{\{[^{}]*\}\}")
MAX_DEPTH = 100  # nesting levels of a RED body; real files need about 12
DEFAULT_MAX_BATCHES = 10_000
DEFAULT_MAX_RED_BYTES = 256 * 2**20  # the experiment as stored, sweep expanded


@dataclass(frozen=True)
class Limits:
    """What one ``POST /red`` may ask of the server (``faice agency serve`` options)."""

    max_batches: int = DEFAULT_MAX_BATCHES
    max_red_bytes: int = DEFAULT_MAX_RED_BYTES


class BadRequest(Exception):
    """400 with this message."""


def parse_flag(text: str | None) -> bool:
    """Upstream's lenient booleans: true/yes/y (any case) or a non-zero integer."""
    if text is None:
        return False
    if text.strip().lower() in {"true", "yes", "y"}:
        return True
    try:
        return int(text) != 0
    except ValueError:
        return False


def parse_red(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("Did not send RED data as JSON.") from None
    except RecursionError:
        raise BadRequest(f"RED data is nested more than {MAX_DEPTH} levels deep.") from None
    if not isinstance(data, dict):
        raise BadRequest("Did not send RED data as JSON.")
    _check_depth(data)
    return data


def _check_depth(data: Any) -> None:
    """Refuse deep nesting before any recursive code (validation, sweeps) sees the data."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise BadRequest(f"RED data is nested more than {MAX_DEPTH} levels deep.")
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))


def check_limits(data: dict[str, Any], limits: Limits) -> None:
    """Batches and stored size within the server's limits, checked before a sweep expands
    (counted as ``faice exec`` counts them: ``maxBatches`` and ``random`` included)."""
    if "sweep" in data:
        from faice.red.sweep import sweep_size

        count = sweep_size(data["sweep"])
        template = len(json.dumps({"inputs": data.get("inputs"), "outputs": data.get("outputs")}))
        size = len(json.dumps({k: v for k, v in data.items() if k not in ("sweep", "inputs", "outputs")})) + count * template
    else:
        count = len(data["batches"]) if isinstance(data.get("batches"), list) else 1
        size = len(json.dumps(data))
    if count > limits.max_batches:
        raise BadRequest(
            f"RED data asks for {count} batches; this agency accepts at most {limits.max_batches} per experiment "
            "(faice agency serve --max-batches)."
        )
    if size > limits.max_red_bytes:
        raise BadRequest(
            f"RED data expands to about {size} bytes; this agency accepts at most {limits.max_red_bytes} "
            "(faice agency serve --max-red-bytes)."
        )


def check_policy(policy: Any, data: dict[str, Any]) -> None:
    """Every connector allowed by the server's connector policy, else 400 naming each key path."""
    from faice.connectors.policy import check
    from faice.errors import format_key_path

    problems = check(policy, data)
    if problems:
        raise BadRequest(
            "RED data uses connectors this agency does not allow:\n"
            + "\n".join(f"{format_key_path(p.path)}: {p.message}" for p in problems)
        )


def _validate(data: dict[str, Any], max_batches: int | None) -> dict[str, Any]:
    from faice.errors import FaiceError
    from faice.red.load import Document
    from faice.red.search import is_search
    from faice.red.validate import validate_red
    from faice.secrets import Redactor

    own = Redactor()  # this request's secrets only: the server's redactor never holds a user's
    try:
        validate_red(Document("RED data", data), redactor=own)
        if is_search(data):
            from faice.agency.search import announced

            if not announced():
                raise BadRequest("This agency cannot run sweep.search: Optuna is not installed on the server "
                                 "(pip install 'faice[search]' there).")
        elif "sweep" in data:
            from faice.red.sweep import expanded_red

            data = expanded_red(data, "RED data", limit=max_batches, keep_faice_keys=True)
    except FaiceError as exc:
        raise BadRequest(own.redact(f"{INVALID_RED}\n{exc}")) from None
    return data


def _variables(data: Any) -> list[str]:
    found: list[str] = []
    if isinstance(data, dict):
        for key, value in data.items():
            found += _variables(key) + _variables(value)
    elif isinstance(data, list):
        for value in data:
            found += _variables(value)
    elif isinstance(data, str):
        found += [m.group(0) for m in _VARIABLE.finditer(data)]
    return found


def check_red(data: dict[str, Any], limits: Limits | None = None) -> dict[str, Any]:
    """Upstream's order: valid RED, no variables, outputs, docker, ram, execution engine."""
    from faice.secrets import normalise_protected_keys

    data = _validate(data, limits.max_batches if limits is not None else None)
    variables = sorted(set(_variables(data)))
    if variables:
        raise BadRequest(
            "Given RED data contains variables that must be filled before submission: " + ", ".join(variables)
        )
    if "batches" in data:
        if not all(isinstance(b, dict) and "outputs" in b for b in data["batches"]):
            raise BadRequest("CC-Agency requires all batches to have outputs defined in RED data.")
    elif "outputs" not in data:
        raise BadRequest("CC-Agency requires outputs to be defined in RED data.")
    container = data.get("container") or {}
    if container.get("engine") != "docker":
        raise BadRequest(f"{INVALID_RED}\ncontainer.engine: CC-Agency supports only docker")
    if not isinstance((container.get("settings") or {}).get("ram"), int):
        raise BadRequest(f"{INVALID_RED}\ncontainer.settings.ram: CC-Agency requires ram (MB) to be set")
    execution = data.get("execution")
    if execution is not None and execution.get("engine") != "ccagency":
        raise BadRequest(f"{INVALID_RED}\nexecution.engine: must be ccagency when sent to CC-Agency, got {execution.get('engine')!r}")
    return normalise_protected_keys(data)


def build_documents(
    data: dict[str, Any], username: str, vault: Vault, *, disable_retry: bool, disable_connector_validation: bool
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    now = time.time()
    experiment_id = new_id()
    container = json.loads(json.dumps(data["container"]))
    image = container["settings"].get("image") or {}
    if "auth" in image:
        image["auth"] = vault.put(experiment_id, image["auth"])
    settings = {k: v for k, v in ((data.get("execution") or {}).get("settings") or {}).items() if k != "access"}
    # RED 9 retries by default (also without an execution section: upstream flaw 22);
    # RED 8 only when the file asked for it.
    wanted = bool(settings.get("retryIfFailed")) if str(data.get("redVersion")) == "8" else True
    settings["retryIfFailed"] = wanted and not disable_retry
    settings["disableConnectorValidation"] = disable_connector_validation
    experiment = {
        "_id": experiment_id,
        "username": username,
        "registrationTime": now,
        "redVersion": data.get("redVersion"),
        "cli": data["cli"],
        "container": container,
        "execution": {"engine": "ccagency", "settings": settings},
        "protectedKeysVoided": False,
    }
    if isinstance(data.get("metrics"), dict):  # faice's own section: read into each batch's record
        experiment["metrics"] = data["metrics"]
    if isinstance(data.get("sweep"), dict) and "search" in data["sweep"]:
        from faice.agency.search import search_documents

        # The server proposes the trials (faice.agency.search): no batch yet; the template's
        # connector credentials sealed for the experiment, as a batch's are for the batch.
        search_documents(data, experiment, {"inputs": seal(vault, experiment_id, data.get("inputs", {})),
                                            "outputs": seal(vault, experiment_id, data.get("outputs", {}))})
        return experiment, []
    jobs = data["batches"] if "batches" in data else [{"inputs": data.get("inputs", {}), "outputs": data.get("outputs", {})}]
    batches = []
    for index, job in enumerate(jobs):
        batch_id = new_id()
        batch = registered_batch(batch_id, experiment, index, seal(vault, batch_id, job.get("inputs", {})),
                                 seal(vault, batch_id, job.get("outputs", {})), now)
        for key in ("doc", "cloud"):
            if key in job:
                batch[key] = job[key]
        batches.append(batch)
    return experiment, batches
