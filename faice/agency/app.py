"""The CC-Agency 9.3 REST API as a WSGI application (werkzeug routing, no framework).

Status codes and bodies follow CC-Agency 9.3's: errors are JSON strings, invalid ids are
400 "Not a valid BSON ObjectId.", other users' work is 404 to non-admins.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from typing import Any

from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound, RequestEntityTooLarge
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from faice.agency import AGENCY_VERSION
from faice.agency.auth import Authenticator, AuthError, User
from faice.agency.dispatcher import Dispatcher
from faice.agency.ids import is_valid_id
from faice.agency.store import FINAL_STATES, STATES, Store
from faice.agency.submit import (
    BadRequest,
    Limits,
    build_documents,
    check_limits,
    check_policy,
    check_red,
    parse_flag,
    parse_red,
)
from faice.agency.vault import Vault
from faice.agency.webui import AgencyUI
from faice.connectors.policy import Policy
from faice.files import dumps_json

log = logging.getLogger("faice.agency")
CHALLENGE = 'Basic realm="Please fill in username and password"'
_LIST_KEYS = ("_id", "username", "registrationTime", "state", "experimentId", "node", "batchesListIndex")
_PUBLIC = {"hello", "schema_red", "schema_container"}
MAX_BODY_BYTES = 64 * 2**20  # a RED with many thousands of batches still fits
DEFAULT_PAGE_SIZE = 1000  # listings without ?limit= (upstream had none: unbounded answers)
MAX_PAGE_SIZE = 10_000  # a larger ?limit= is cut to this
MAX_SQL_INTEGER = 2**63 - 1  # SQLite's and PostgreSQL's BIGINT: a larger ?skip= is a 400, not a 500
MAX_QUERY_TEXT = 1000  # characters of a text query value (user, node, state, experiment id)
_INTEGER = re.compile(r"[+-]?[0-9]{1,30}")  # ASCII digits only (int() takes '1_0' and other scripts)
IDEMPOTENCY_HEADER = "Idempotency-Key"
# What this server does beyond CC-Agency, announced on /version: "metrics" = it keeps a RED
# file's metrics section, records each batch's metrics and applies its early stopping (a
# client strips it otherwise); "search" (with Optuna installed) = it runs sweep.search.
FEATURES = ["metrics"]
_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,200}$")


@dataclass
class Agency:
    store: Store
    vault: Vault
    auth: Authenticator
    dispatcher: Dispatcher
    policy: Policy = field(default_factory=Policy)
    limits: Limits = field(default_factory=Limits)
    max_body_bytes: int = MAX_BODY_BYTES


def _json(data: Any, status: int = 200) -> Response:
    return Response(dumps_json(data), status=status, mimetype="application/json")


def _error(status: int, text: str) -> Response:
    names = {
        400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed", 409: "Conflict",
        413: "Payload Too Large", 500: "Internal Server Error",
    }
    return _json(f"{status} {names.get(status, '')}: {text}", status)


class AgencyApp:
    url_map = Map(
        [
            Rule("/", endpoint="hello", methods=["GET"]),
            Rule("/version", endpoint="version", methods=["GET"]),
            Rule("/login", endpoint="login", methods=["POST"]),
            Rule("/refreshtoken", endpoint="refresh", methods=["POST"]),
            Rule("/schema/red", endpoint="schema_red", methods=["GET"]),
            Rule("/schema/engines/container", endpoint="schema_container", methods=["GET"]),
            Rule("/red", endpoint="red", methods=["POST"]),
            Rule("/experiments", endpoint="experiments", methods=["GET"]),
            Rule("/experiments/count", endpoint="experiments_count", methods=["GET"]),
            Rule("/experiments/<eid>", endpoint="experiment", methods=["GET"]),
            Rule("/experiments/<eid>/trials", endpoint="trials", methods=["GET"]),
            Rule("/batches", endpoint="batches", methods=["GET"]),
            Rule("/batches/count", endpoint="batches_count", methods=["GET"]),
            Rule("/batches/<bid>", endpoint="batch", methods=["GET", "DELETE"]),
            Rule("/batches/<bid>/<name>", endpoint="batch_file", methods=["GET"]),
            Rule("/nodes", endpoint="nodes", methods=["GET"]),
        ],
        strict_slashes=False,
    )

    def __init__(self, agency: Agency):
        self.agency = agency
        self.ui = AgencyUI(agency.store, agency.auth, self.dispatch)  # the web pages under /ui/

    def __call__(self, environ, start_response):
        request = Request(environ)
        response = self.ui(request) if AgencyUI.wants(request.path) else self.dispatch(request)
        log.info("%s %s %s", request.method, request.path, response.status_code)
        return response(environ, start_response)

    # ------------------------------------------------------------ plumbing
    def dispatch(self, request: Request) -> Response:
        adapter = self.url_map.bind_to_environ(request.environ)
        try:
            endpoint, values = adapter.match()
        except NotFound:
            return _error(404, "The requested URL was not found on the server.")
        except MethodNotAllowed:
            return _error(405, "The method is not allowed for the requested URL.")
        except HTTPException as exc:  # redirects for trailing slashes and the like
            return exc.get_response(request.environ)
        limit = self.agency.max_body_bytes
        request.max_content_length = limit
        try:
            user = None if endpoint in _PUBLIC else self.authenticate(request, refresh=endpoint == "refresh")
            return getattr(self, "on_" + endpoint)(request, user, **values)
        except RequestEntityTooLarge:
            size = f" of {request.content_length} bytes" if request.content_length else ""
            return _error(413, f"The request body{size} is larger than this agency accepts ({limit} bytes; "
                               "faice agency serve --max-request-bytes).")
        except RecursionError:  # a safety net: parse_red already refuses deep nesting
            log.warning("request %s %s refused: nested too deeply", request.method, request.path)
            return _error(400, "The request is nested too deeply.")
        except HTTPException as exc:
            return _error(exc.code or 400, exc.description or exc.name)
        except AuthError as exc:
            response = Response(str(exc) if str(exc) else "Unauthorized", status=401, mimetype="text/plain")
            response.headers["WWW-Authenticate"] = CHALLENGE
            return response
        except BadRequest as exc:
            return _error(400, str(exc))
        except Exception:
            log.exception("request %s %s failed", request.method, request.path)
            return _error(500, "The server could not complete the request; see the agency log.")

    def authenticate(self, request: Request, *, refresh: bool = False) -> User:
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value:
            return self.agency.auth.bearer(value.strip(), "refresh" if refresh else "access")
        if scheme.lower() == "basic" and value and not refresh:
            try:
                name, _, password = base64.b64decode(value.strip()).decode("utf-8").partition(":")
            except (ValueError, UnicodeDecodeError):
                raise AuthError("Unauthorized") from None
            return self.agency.auth.basic(name, password, request.remote_addr or "")
        raise AuthError("Unauthorized")

    @staticmethod
    def _int(request: Request, name: str, minimum: int) -> int | None:
        """A query integer within SQL's 64-bit range (beyond it SQLite and PostgreSQL fail)."""
        text = _text(request, name)
        if text is None:
            return None
        if not _INTEGER.fullmatch(text):
            raise BadRequest(f"Query parameter {name} must be an integer, got {text[:40]!r}.")
        value = int(text)
        if not minimum <= value <= MAX_SQL_INTEGER:
            raise BadRequest(f"Query parameter {name} must be between {minimum} and {MAX_SQL_INTEGER}, "
                             f"got {text[:40]}{'…' if len(text) > 40 else ''}.")
        return value

    def _filters(self, request: Request, user: User, *, batches: bool, validate: bool) -> dict[str, Any] | None:
        """The listing's filters; None when the user may see nothing of what was asked for."""
        username = _text(request, "username")
        filters: dict[str, Any] = {"username": username}
        if batches:
            filters["node"] = _text(request, "node")
            filters["state"] = _text(request, "state")
            filters["experimentId"] = _text(request, "experimentId")
            if validate and filters["state"] is not None and filters["state"] not in STATES:
                raise BadRequest(f"Query parameter state must be one of {', '.join(STATES)}.")
            if validate and filters["experimentId"] is not None and not is_valid_id(filters["experimentId"]):
                raise BadRequest("Query parameter experimentId is not a valid BSON ObjectId.")
        if not user.is_admin:
            if username not in (None, user.name):
                return None  # another user's work is invisible, not an error
            filters["username"] = user.name
        return filters

    def _visible(self, doc: dict[str, Any] | None, user: User, what: str) -> dict[str, Any]:
        if doc is None or (not user.is_admin and doc.get("username") != user.name):
            raise _NotFound(f"Could not find {what}.")
        return doc

    # ------------------------------------------------------------ endpoints
    def on_hello(self, request, user):
        return _json({"Hello": "World"})

    def on_version(self, request, user):
        import faice
        from faice.agency.search import announced

        features = FEATURES + (["search"] if announced() else [])
        return _json({"agencyVersion": AGENCY_VERSION, "faiceVersion": faice.__version__, "faiceFeatures": features})

    def on_login(self, request, user):
        auth = self.agency.auth
        return _json({"username": user.name, "access_token": auth.issue(user), "refresh_token": auth.issue(user, "refresh")})

    def on_refresh(self, request, user):
        return _json({"access_token": self.agency.auth.issue(user)})

    def on_schema_red(self, request, user):
        return _json(_schema("red-9.json"))

    def on_schema_container(self, request, user):
        return _json({"docker": _schema("red-engine-container-docker.json")})

    def on_red(self, request, user):
        body = request.get_data(cache=False)
        key = request.headers.get(IDEMPOTENCY_HEADER)
        idempotency = None
        if key is not None:
            if not _IDEMPOTENCY_KEY.match(key):
                raise BadRequest(f"Header {IDEMPOTENCY_HEADER} must be 1 to 200 printable ASCII characters.")
            idempotency = (key, hashlib.sha256(body).hexdigest())
            earlier = self._repeated(user, idempotency)
            if earlier is not None:
                return earlier
        data = parse_red(body)
        check_limits(data, self.agency.limits)
        data = check_red(data, self.agency.limits)
        check_policy(self.agency.policy, data)
        experiment, batches = build_documents(
            data,
            user.name,
            self.agency.vault,
            disable_retry=parse_flag(request.args.get("disableRetry")),
            disable_connector_validation=parse_flag(request.args.get("disableConnectorValidation")),
        )
        stored = self.agency.store.insert_experiment(experiment, batches, user=user.name, idempotency=idempotency)
        if stored != experiment["_id"]:  # a concurrent request with the same key won
            for owner in [experiment["_id"], *(b["_id"] for b in batches)]:
                self.agency.vault.delete_owner(owner)
            repeated = self._repeated(user, idempotency) if idempotency else None
            return repeated or _json({"experimentId": stored})
        if "search" in experiment:
            self.agency.dispatcher.searches.add(experiment["_id"])
        self.agency.dispatcher.wake()
        return _json({"experimentId": experiment["_id"]})

    def _repeated(self, user: User, idempotency: tuple[str, str]) -> Response | None:
        """The first answer for a repeated Idempotency-Key (409 when the body differs)."""
        found = self.agency.store.idempotent(user.name, idempotency[0])
        if found is None:
            return None
        experiment_id, body_hash = found
        if body_hash != idempotency[1]:
            return _error(409, f"{IDEMPOTENCY_HEADER} {idempotency[0]!r} was already used for different RED data.")
        return _json({"experimentId": experiment_id})

    def _list(self, request, user, table: str):
        filters = self._filters(request, user, batches=table == "batches", validate=True)
        skip = self._int(request, "skip", 0) or 0
        limit = min(self._int(request, "limit", 1) or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        ascending = parse_flag(request.args.get("ascending"))
        docs = [] if filters is None else self.agency.store.list(table, filters, skip=skip, limit=limit,
                                                                 ascending=ascending)
        if table == "experiments":
            return _json([_experiment_summary(d) for d in docs])
        return _json([_batch_summary(d) for d in docs])

    def on_experiments(self, request, user):
        return self._list(request, user, "experiments")

    def on_batches(self, request, user):
        return self._list(request, user, "batches")

    def on_experiments_count(self, request, user):
        return self._count(request, user, "experiments")

    def on_batches_count(self, request, user):
        return self._count(request, user, "batches")

    def _count(self, request, user, table: str):
        filters = self._filters(request, user, batches=table == "batches", validate=False)
        return _json({"count": 0 if filters is None else self.agency.store.count(table, filters)})

    def on_experiment(self, request, user, eid: str):
        _check_id(eid)
        try:
            return _json(_public(self._visible(self.agency.store.experiment(eid), user, "experiment")))
        except _NotFound as exc:
            return _error(404, str(exc))

    def on_trials(self, request, user, eid: str):
        """faice's own: a search experiment's trial log (``search/trials.jsonl`` events, each
        naming the agency's batch id), which ``faice exec --wait --outdir`` writes."""
        from faice.agency.search import trial_events

        _check_id(eid)
        try:
            self._visible(self.agency.store.experiment(eid), user, "experiment")
        except _NotFound as exc:
            return _error(404, str(exc))
        return _json(trial_events(self.agency.dispatcher.workdir, self.agency.store, eid))

    def on_batch(self, request, user, bid: str):
        _check_id(bid)
        store = self.agency.store
        try:
            batch = self._visible(store.batch(bid), user, "batch")
        except _NotFound as exc:
            return _error(404, str(exc))
        if request.method == "DELETE" and batch["state"] not in FINAL_STATES:
            cancelled = store.transition(bid, "cancelled", expect=set(STATES) - FINAL_STATES, node=batch["node"], debug_info=f"cancelled by {user.name}")
            self.agency.dispatcher.cancel(bid)
            batch = cancelled or store.batch(bid) or batch
        return _json(_public(batch))

    def on_batch_file(self, request, user, bid: str, name: str):
        _check_id(bid)
        if name not in ("stdout", "stderr"):
            raise BadRequest("Filename must be stdout or stderr.")
        try:
            self._visible(self.agency.store.batch(bid), user, "batch")
        except _NotFound as exc:
            return _error(404, str(exc))
        text = self.agency.store.log(bid, name)
        if text is None:
            return _error(404, f"No {name} was recorded for this batch.")
        return Response(text, mimetype="text/plain")

    def on_nodes(self, request, user):
        store = self.agency.store
        active = store.batches_in({"scheduled", "processing"})
        if not user.is_admin:
            active = [b for b in active if b["username"] == user.name]
        experiments: dict[str, int | None] = {}
        current = []
        for batch in active:
            if batch["experimentId"] not in experiments:
                exp = store.experiment(batch["experimentId"]) or {}
                experiments[batch["experimentId"]] = ((exp.get("container") or {}).get("settings") or {}).get("ram")
            current.append({"batchId": batch["_id"], "ram": experiments[batch["experimentId"]]})
        return _json(
            [
                {
                    "nodeName": "local",
                    "state": "online",
                    "history": [],
                    "ram": _ram_mb(),
                    "cpus": os.cpu_count(),
                    "gpus": None,
                    "currentBatches": current,
                }
            ]
        )


class _NotFound(Exception):
    pass


def _text(request: Request, name: str) -> str | None:
    """A query value as SQL may take it: no NUL (PostgreSQL refuses it in text), bounded."""
    value = request.args.get(name)
    if value is not None and ("\0" in value or len(value) > MAX_QUERY_TEXT):
        raise BadRequest(f"Query parameter {name} must be at most {MAX_QUERY_TEXT} characters, without NUL.")
    return value


def _check_id(value: str) -> None:
    if not is_valid_id(value):
        raise BadRequest("Not a valid BSON ObjectId.")


def _public(doc: dict[str, Any]) -> dict[str, Any]:
    return doc


def _batch_summary(doc: dict[str, Any]) -> dict[str, Any]:
    summary = {k: doc.get(k) for k in _LIST_KEYS}
    summary["history"] = [{k: h.get(k) for k in ("node", "state", "time")} for h in doc.get("history", [])]
    return summary


def _experiment_summary(doc: dict[str, Any]) -> dict[str, Any]:
    settings = (doc.get("container") or {}).get("settings") or {}
    return {
        "_id": doc["_id"],
        "username": doc["username"],
        "registrationTime": doc["registrationTime"],
        "redVersion": doc.get("redVersion"),
        "image": (settings.get("image") or {}).get("url"),
    }


def _schema(name: str) -> Any:
    from importlib import resources

    try:
        return json.loads(resources.files("faice.schemas").joinpath(name).read_text())
    except (FileNotFoundError, ModuleNotFoundError, ValueError):
        raise BadRequest(f"schema {name} is not part of this build") from None


def _ram_mb() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    except (ValueError, OSError):
        return None
