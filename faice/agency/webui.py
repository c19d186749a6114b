"""The agency's ``/ui/``: the pages of ``faice ui`` over its experiments, behind its own login.

Signing in (a form, checked by the same :class:`Authenticator` as the API, lockout included)
gives the browser the API's own access token in a cookie that scripts cannot read and other
sites never send (HttpOnly, SameSite=Strict, path /ui/). Each user sees only their
experiments (an admin all), exactly as the API lists them; another user's experiment is the
same "not found" as one that does not exist. Every form that changes something (sign in,
sign out, cancel) carries a token tied to the session and is refused from another origin;
cancelling is the API's own ``DELETE /batches/<id>``, called with the user's token, so the
API's checks are the only checks.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote, urlsplit

from werkzeug.wrappers import Request, Response

from faice.agency.auth import Authenticator, AuthError, User
from faice.agency.store import Store
from faice.agency.ui import source as pages
from faice.agency.ui.live import ChangeLog
from faice.agency.ui.source import NotFound
from faice.agency.ui.web import UI, page, secure
from faice.pipeline.records import BatchRecord, agency_batch_record
from faice.pipeline.results import build_results

PREFIX = "/ui"
SESSION_COOKIE = "faice_ui_session"
LOGIN_COOKIE = "faice_ui_login"
MAX_EXPERIMENTS = 200  # newest experiments on the runs page
Api = Callable[[Request], Response]


def _csrf(secret: str) -> str:
    return hashlib.sha256(b"faice-ui-csrf\0" + secret.encode()).hexdigest()


class AgencySource:
    """The experiments in an agency's store, as runs; ``viewer`` is the signed-in user."""

    def __init__(self, store: Store):
        self.store = store
        self._lock = threading.Lock()
        self._views: dict[str, tuple[tuple, pages.RunView]] = {}
        self._changes: dict[str, ChangeLog] = {}

    def _experiment(self, user: User, eid: str) -> dict[str, Any]:
        from faice.agency.ids import is_valid_id

        experiment = self.store.experiment(eid) if is_valid_id(eid) else None
        if experiment is None or (not user.is_admin and experiment.get("username") != user.name):
            raise NotFound("no such experiment")
        return experiment

    def _batches(self, eid: str) -> list[dict[str, Any]]:
        return self.store.list("batches", {"experimentId": eid}, ascending=True)

    def runs(self, viewer: User) -> list[pages.RunSummary]:
        filters = {} if viewer.is_admin else {"username": viewer.name}
        experiments = self.store.list("experiments", filters, limit=MAX_EXPERIMENTS)
        return [self.run(viewer, e["_id"]).summary for e in experiments]

    def run(self, viewer: User, run_id: str, *, since: int | None = None) -> pages.RunView:
        experiment = self._experiment(viewer, run_id)
        batches = self._batches(run_id)
        key = tuple((b["_id"], b["state"], len(b.get("history") or [])) for b in batches)
        with self._lock:
            cached = self._views.get(run_id)
            changes = self._changes.setdefault(run_id, ChangeLog())
            if cached is None or cached[0] != key:
                records = [agency_batch_record(b) for b in batches]
                results = build_results(Path(run_id), records)
                view = pages.view_of(run_id, run_id, _header(experiment, records), results, changes, owner=experiment.get("username"))
                self._views[run_id] = (key, view)
            else:
                view = cached[1]
            return pages.changed_view(view, changes, since)

    def _batch(self, viewer: User, run_id: str, batch_id: str) -> dict[str, Any]:
        self._experiment(viewer, run_id)
        batch = self.store.batch(batch_id) if batch_id.isalnum() else None
        if batch is None or batch.get("experimentId") != run_id:
            raise NotFound("no such batch")
        return batch

    def batch(self, viewer: User, run_id: str, batch_id: str) -> dict[str, Any]:
        batch = self._batch(viewer, run_id, batch_id)
        record = agency_batch_record(batch)
        record["agency"] = {"state": batch["state"], "node": batch.get("node"), "attempts": batch.get("attempts"),
                            "history": [{k: h.get(k) for k in ("state", "time", "node", "debugInfo")}
                                        for h in batch.get("history") or []]}
        return record

    def series(self, viewer: User, run_id: str, batch_id: str) -> dict[str, list[list[Any]]]:
        metrics = agency_batch_record(self._batch(viewer, run_id, batch_id)).get("metrics") or {}
        return dict(metrics.get("series") or {}) if isinstance(metrics, dict) else {}

    def curves(self, viewer: User, run_id: str, batch_ids: list[str], metric: str) -> dict[str, list[list[Any]]]:
        return {}  # the agency keeps each batch's final metrics, not their steps

    def log(self, viewer: User, run_id: str, batch_id: str, stream: str, offset: int | None) -> pages.LogChunk:
        if stream not in ("stdout", "stderr"):
            raise NotFound("no such stream")
        self._batch(viewer, run_id, batch_id)
        return pages.log_slice((self.store.log(batch_id, stream) or "").encode("utf-8", "replace"), offset)

    def outputs(self, viewer: User, run_id: str, batch_id: str) -> list[pages.OutputFile] | None:
        self._batch(viewer, run_id, batch_id)
        return None  # an agency sends outputs where the RED file's connectors say

    def open_output(self, viewer: User, run_id: str, batch_id: str, path: str) -> BinaryIO:
        raise NotFound("no such output")

    def crate(self, viewer: User, run_id: str, target: Path) -> None:
        """The experiment written as a run directory through the records API, then its crate."""
        from faice.pipeline.rocrate import write_crate
        from faice.pipeline.rundir import RED_FILE, RunDir
        from faice.secrets import REDACTOR, batch_redactor

        experiment = self._experiment(viewer, run_id)
        with tempfile.TemporaryDirectory(prefix="faice-agency-crate-") as work:
            rundir = RunDir(Path(work) / run_id)
            rundir.root.mkdir()
            red = {k: experiment.get(k) for k in ("redVersion", "cli", "container", "execution") if experiment.get(k)}
            masking = batch_redactor(red, parent=REDACTOR)
            rundir.save_red(masking.redact_data(red), masking.redact)
            records = []
            for batch in self._batches(run_id):
                record = BatchRecord.from_dict(agency_batch_record(batch))
                rundir.write_record(record, redact=masking.redact)
                records.append(record)
            image = ((experiment.get("container") or {}).get("settings") or {}).get("image") or {}
            rundir.write_run({"runId": run_id, "redFile": RED_FILE, "image": {"ref": image.get("url")},
                              "started": _iso(experiment.get("registrationTime"))},
                             [r.entry() for r in records], redact=masking.redact)
            write_crate(rundir.root, target)


def _iso(seconds: Any) -> str | None:
    from datetime import datetime, timezone

    if not isinstance(seconds, (int, float)):
        return None
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _header(experiment: dict[str, Any], records: list[dict[str, Any]]) -> dict[str, Any]:
    counts: dict[str, int] = {}
    for record in records:
        counts[record["state"]] = counts.get(record["state"], 0) + 1
    states = set(counts)
    if states & {"pending", "running"}:
        state = "running"
    elif states <= {"succeeded"}:
        state = "succeeded"
    elif "cancelled" in states:
        state = "cancelled"
    else:
        state = "failed"
    image = ((experiment.get("container") or {}).get("settings") or {}).get("image") or {}
    return {"state": state, "counts": counts, "started": _iso(experiment.get("registrationTime")),
            "engine": "agency", "image": {"ref": image.get("url")}}


class AgencyUI:
    """``/ui/…`` of an agency: sign-in, sign-out and cancel here; the pages from :class:`UI`."""

    def __init__(self, store: Store, auth: Authenticator, api: Api):
        self.ui = UI(AgencySource(store), base=PREFIX + "/")
        self.auth = auth
        self.api = api

    @staticmethod
    def wants(path: str) -> bool:
        return path == PREFIX or path.startswith(PREFIX + "/")

    def __call__(self, request: Request) -> Response:
        path = request.path[len(PREFIX):] or "/"
        if request.path == PREFIX:
            return self._redirect(PREFIX + "/")
        if path == "/login":
            return self.login(request)
        if path.startswith("/static/"):
            return self.ui.handle(request, path)
        token = request.cookies.get(SESSION_COOKIE, "")
        try:
            user = self.auth.bearer(token) if token else None
        except AuthError:
            user = None
        if user is None:
            return self._redirect(f"{PREFIX}/login?next={quote(request.full_path.rstrip('?'), safe='')}")
        csrf = _csrf(token)
        context: dict[str, Any] = {"user": user, "csrf": csrf, "can_cancel": True}
        if request.method == "POST":
            if not self._same_origin(request) or not hmac.compare_digest(request.form.get("csrf", ""), csrf):
                return secure(Response("Refused: this form did not come from this page.", status=403, mimetype="text/plain"))
            if path == "/logout":
                response = self._redirect(PREFIX + "/login")
                response.delete_cookie(SESSION_COOKIE, path=PREFIX + "/")
                return response
            parts = path.strip("/").split("/")
            if len(parts) == 5 and parts[0] == "runs" and parts[2] == "batches" and parts[4] == "cancel":
                return self.cancel(request, token, user, parts[1], parts[3])
        return self.ui.handle(request, path, user, **context)

    def cancel(self, request: Request, token: str, user: User, eid: str, bid: str) -> Response:
        try:
            self.ui.source.batch(user, eid, bid)  # the batch belongs to this experiment, for this user
        except NotFound as exc:
            return self.ui.not_found({"user": user}, str(exc))
        environ = {**request.environ, "REQUEST_METHOD": "DELETE", "PATH_INFO": f"/batches/{bid}", "SCRIPT_NAME": "",
                   "QUERY_STRING": "", "CONTENT_LENGTH": "0", "HTTP_AUTHORIZATION": f"Bearer {token}"}
        answer = self.api(Request(environ))
        if answer.status_code != 200:
            return secure(Response(f"The agency refused to cancel: {answer.get_data(as_text=True)}",
                                   status=answer.status_code, mimetype="text/plain"))
        return self._redirect(f"{PREFIX}/runs/{quote(eid, safe='')}/batches/{quote(bid, safe='')}/")

    def login(self, request: Request) -> Response:
        target = request.args.get("next", "")
        if not target.startswith(PREFIX + "/") or target.startswith("//"):
            target = PREFIX + "/"
        nonce = request.cookies.get(LOGIN_COOKIE, "")
        if request.method == "POST":
            if not nonce or not self._same_origin(request) or not hmac.compare_digest(request.form.get("csrf", ""), _csrf(nonce)):
                return secure(Response("Refused: this form did not come from this page.", status=403, mimetype="text/plain"))
            try:
                user = self.auth.basic(request.form.get("username", ""), request.form.get("password", ""),
                                       request.remote_addr or "")
            except AuthError as exc:
                return self._login_page(nonce, target, str(exc), status=401)
            response = self._redirect(target)
            response.set_cookie(SESSION_COOKIE, self.auth.issue(user), httponly=True, samesite="Strict",
                                path=PREFIX + "/", secure=request.is_secure)
            response.delete_cookie(LOGIN_COOKIE, path=PREFIX + "/")
            return response
        if request.method != "GET":
            return secure(Response("Method not allowed", status=405, mimetype="text/plain"))
        return self._login_page(nonce or secrets.token_urlsafe(24), target, None)

    def _login_page(self, nonce: str, target: str, error: str | None, status: int = 200) -> Response:
        response = page("login.html", status, base=PREFIX + "/", csrf=_csrf(nonce), error=error,
                        action=f"{PREFIX}/login?next={quote(target, safe='')}")
        response.set_cookie(LOGIN_COOKIE, nonce, httponly=True, samesite="Strict", path=PREFIX + "/")
        return response

    @staticmethod
    def _same_origin(request: Request) -> bool:
        origin = request.headers.get("Origin") or request.headers.get("Referer")
        if not origin:
            return True  # an old browser; the session-bound token still has to match
        return urlsplit(origin).netloc.lower() == request.host.lower()

    @staticmethod
    def _redirect(location: str) -> Response:
        response = secure(Response("", status=303))
        response.headers["Location"] = location
        return response
