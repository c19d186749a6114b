"""The pages of ``faice ui`` (and of an agency's ``/ui/``) as a WSGI application.

Read-only: every page is a GET. Pages are rendered on the server by Jinja2 with autoescape
(every value from a record — metric and parameter names, values, log lines, messages — is
text, never markup); the one script and the stylesheet are files of this package, and the
Content-Security-Policy forbids anything else (no inline script, no inline handler, no other
host). The ranked table sorts, filters and pages on the server through plain links and a
GET form, so it works by keyboard and screen reader without any script; the script only
adds live updates (polling a small JSON answer that names what changed).
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup
from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.exceptions import NotFound as RouteNotFound
from werkzeug.routing import Map, Rule
from werkzeug.utils import send_file
from werkzeug.wrappers import Request, Response

from faice.agency.ui.charts import SMALL, Curve, line_chart, scatter
from faice.agency.ui.source import NotFound, RunView, Source
from faice.pipeline.results import Results, winner_line

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",  # "no-referrer" would send Origin: null with our own forms
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
CURVES = 20  # batches on the learning-curve chart (the best ranked, the best marked)
SCATTERS = 8  # parameters plotted against the objective
FAILURES = 200  # failed or stopped batches listed
TRIALS = 200  # a search's latest proposals listed
STATIC = {"ui.js": "text/javascript", "ui.css": "text/css", "favicon.svg": "image/svg+xml"}
FAILED_STATES = ("failed", "cancelled", "stopped")

_ENV = Environment(loader=PackageLoader("faice.agency.ui", "templates"), autoescape=select_autoescape(default=True),
                   trim_blocks=True, lstrip_blocks=True)
_ENV.filters["q"] = lambda value: quote(str(value), safe="")


def _text(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


_ENV.filters["cell"] = _text


def secure(response: Response) -> Response:
    """The headers every answer carries, pages and JSON alike."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    response.headers.setdefault("Cache-Control", "no-store")
    return response


def page(template: str, status: int = 200, **context: Any) -> Response:
    return secure(Response(_ENV.get_template(template).render(**context), status=status, mimetype="text/html"))


def json_response(data: Any, status: int = 200) -> Response:
    return secure(Response(json.dumps(data, default=str, allow_nan=False), status=status, mimetype="application/json"))


class UI:
    """The pages over ``source`` under ``base`` (``/`` for ``faice ui``, ``/ui/`` on an agency)."""

    url_map = Map([
        Rule("/", endpoint="runs"),
        Rule("/static/<name>", endpoint="static"),
        Rule("/runs/<rid>/", endpoint="run"),
        Rule("/runs/<rid>/ro-crate.zip", endpoint="crate"),
        Rule("/runs/<rid>/batches/<bid>/", endpoint="batch"),
        Rule("/runs/<rid>/batches/<bid>/outputs/<path:path>", endpoint="output"),
        Rule("/api/runs/<rid>/changes", endpoint="changes"),
        Rule("/api/runs/<rid>/batches/<bid>/log/<stream>", endpoint="log"),
    ], strict_slashes=True)

    def __init__(self, source: Source, *, base: str = "/"):
        self.source = source
        self.base = base if base.endswith("/") else base + "/"

    def handle(self, request: Request, path: str, viewer: Any = None, **context: Any) -> Response:
        """Answer a GET of ``path`` (below the base) for ``viewer``; ``context`` goes to the
        templates (the agency's user, CSRF token and whether batches can be cancelled)."""
        adapter = self.url_map.bind("ui", script_name=self.base.rstrip("/") or "/")
        try:
            endpoint, values = adapter.match(path, method="GET")
        except RouteNotFound:
            return self.not_found(context, "No such page.")
        except MethodNotAllowed:
            return secure(Response("Method not allowed", status=405, mimetype="text/plain"))
        except HTTPException as exc:  # a redirect to the path with its slash
            return secure(exc.get_response(request.environ))
        if request.method not in ("GET", "HEAD"):
            return secure(Response("Method not allowed (the pages are read-only)", status=405, mimetype="text/plain"))
        handler: Callable[..., Response] = getattr(self, "on_" + endpoint)
        try:
            return handler(request, viewer, context, **values)
        except NotFound as exc:
            return self.not_found(context, str(exc))

    def not_found(self, context: dict[str, Any], message: str) -> Response:
        return page("error.html", 404, base=self.base, message=message, **context)

    # ------------------------------------------------------------ pages
    def on_static(self, request, viewer, context, name: str) -> Response:
        if name not in STATIC:
            raise NotFound("no such file")
        data = resources.files("faice.agency.ui").joinpath("static", name).read_bytes()
        response = secure(Response(data, mimetype=STATIC[name]))
        response.headers["Cache-Control"] = "no-cache"
        return response

    def on_runs(self, request, viewer, context) -> Response:
        return page("runs.html", base=self.base, runs=self.source.runs(viewer), **context)

    def on_run(self, request, viewer, context, rid: str) -> Response:
        view = self.source.run(viewer, rid)
        results = view.results
        table = _Table(results, request.args)
        charts = self._charts(viewer, rid, view)
        failures = [r for r in results.rows if r["state"] in FAILED_STATES]
        trials = list(reversed(view.trials or []))[:TRIALS]
        return page(
            "run.html", base=self.base, run=view.summary, view=view, table=table, charts=charts,
            trials=trials, trial_count=len(view.trials or []),
            winner=winner_line(results), failures=failures[:FAILURES], failure_count=len(failures),
            header=view.header, **context)

    def _charts(self, viewer: Any, rid: str, view: RunView) -> dict[str, Any]:
        """The run's charts, made once per change of the run (kept with its view)."""
        cached = view.__dict__.get("_charts")
        if cached is None:
            cached = view.__dict__["_charts"] = self._make_charts(viewer, rid, view)
        return cached

    def _make_charts(self, viewer: Any, rid: str, view: RunView) -> dict[str, Any]:
        results = view.results
        objective = results.objective
        if not objective:
            return {}
        name = objective["name"]
        ranked = [r for r in results.rows if r["objective"] is not None][:CURVES]
        series = self.source.curves(viewer, rid, [str(r["batch"]) for r in ranked], name)
        curves = [Curve(_label(results, row), series[str(row["batch"])], bool(row["best"]))
                  for row in ranked if str(row["batch"]) in series]
        charts: dict[str, Any] = {"curves": line_chart(curves, "step", name, f"{name} per step, {len(curves)} best batches"),
                                  "scatters": []}
        for parameter in results.parameters[:SCATTERS]:
            points = [(row.get(f"param.{parameter}"), row["objective"], bool(row["best"]), _label(results, row))
                      for row in results.rows]
            chart = scatter(points, parameter, name, f"{name} against {parameter}")
            if chart is not None:
                charts["scatters"].append(chart)
        return charts

    def on_batch(self, request, viewer, context, rid: str, bid: str) -> Response:
        view = self.source.run(viewer, rid)
        record = self.source.batch(viewer, rid, bid)
        row = view.row(bid) or {}
        series = self.source.series(viewer, rid, bid)
        charts = [c for c in (line_chart([Curve(metric, points)], "step", metric, f"{metric} per step", SMALL)
                              for metric, points in list(series.items())[:8]) if c is not None]
        logs = {stream: self.source.log(viewer, rid, bid, stream, None) for stream in ("stdout", "stderr")}
        return page(
            "batch.html", base=self.base, run=view.summary, row=row, batch_id=bid, record=record,
            record_text=json.dumps(record, indent=2, default=str), charts=charts, logs=logs,
            outputs=self.source.outputs(viewer, rid, bid), live=row.get("state") in ("pending", "running"),
            parameters=[(p, row.get(f"param.{p}")) for p in view.results.parameters],
            metrics=[(m, row.get(f"metric.{m}")) for m in view.results.metrics], **context)

    def on_output(self, request, viewer, context, rid: str, bid: str, path: str) -> Response:
        file = self.source.open_output(viewer, rid, bid, path)
        response = send_file(file, request.environ, mimetype="application/octet-stream",
                             as_attachment=True, download_name=Path(path).name)
        return secure(response)

    def on_crate(self, request, viewer, context, rid: str) -> Response:
        work = Path(tempfile.mkdtemp(prefix="faice-crate-"))
        try:
            self.source.crate(viewer, rid, work / "crate")
            archive = shutil.make_archive(str(work / "crate"), "zip", work / "crate")
            data = Path(archive).read_bytes()
        finally:
            shutil.rmtree(work, ignore_errors=True)
        response = secure(Response(data, mimetype="application/zip"))
        response.headers["Content-Disposition"] = f"attachment; filename*=UTF-8''{quote(rid, safe='')}-ro-crate.zip"
        return response

    # ------------------------------------------------------------ live updates
    def on_changes(self, request, viewer, context, rid: str) -> Response:
        try:
            since = int(request.args.get("since", ""))
        except ValueError:
            since = -1
        view = self.source.run(viewer, rid, since=since)
        rows = []
        if view.changed:
            rows = [_public(row) for batch in sorted(view.changed) if (row := view.row(batch)) is not None]
        return json_response({"version": view.version, "state": view.summary.state, "counts": view.summary.counts,
                              "live": view.live, "reload": view.changed is None, "rows": rows})

    def on_log(self, request, viewer, context, rid: str, bid: str, stream: str) -> Response:
        try:
            offset: int | None = max(0, int(request.args.get("offset", "")))
        except ValueError:
            offset = None
        chunk = self.source.log(viewer, rid, bid, stream, offset)
        row = self.source.run(viewer, rid).row(bid) or {}
        return json_response({"text": chunk.text, "offset": chunk.offset, "skipped": chunk.skipped,
                              "state": row.get("state"), "live": row.get("state") in ("pending", "running")})


def _public(row: dict[str, Any]) -> dict[str, Any]:
    """A row as the live script gets it (values as the table shows them)."""
    return {"batch": str(row["batch"]), "state": row["state"], "rank": row["rank"], "best": bool(row["best"]),
            "objective": _text(row["objective"]), "seconds": _text(row["seconds"]),
            "failure": _text(row["failure"]), "message": _text(row["message"])}


def _label(results: Results, row: dict[str, Any]) -> str:
    values = ", ".join(f"{p}={_text(row.get(f'param.{p}'))}" for p in results.parameters)
    return f"{row['batch']} ({values})" if values else str(row["batch"])


class _Table:
    """The ranked rows as one page shows them: filtered, sorted and cut to a page."""

    def __init__(self, results: Results, args: Any):
        self.results = results
        self.columns = ["rank", "batch", "state", "seconds", "objective",
                        *(f"param.{p}" for p in results.parameters),
                        *(f"metric.{m}" for m in results.metrics if not results.objective or m != results.objective["name"]),
                        "failure"]
        self.query = str(args.get("q", ""))[:200]
        self.state = str(args.get("state", ""))[:20]
        self.sort = args.get("sort", "rank") if args.get("sort", "rank") in self.columns else "rank"
        self.order = "desc" if args.get("order") == "desc" else "asc"
        rows = results.rows
        if self.state:
            rows = [r for r in rows if r["state"] == self.state]
        if self.query:
            needle = self.query.lower()
            rows = [r for r in rows if needle in " ".join(
                _text(r.get(c)) for c in ("batch", "state", "failure", "message", *self.columns[5:])).lower()]
        if self.sort != "rank" or self.order == "desc":
            present = [r for r in rows if r.get(self.sort) is not None]
            missing = [r for r in rows if r.get(self.sort) is None]
            present.sort(key=lambda r: _sort_key(r.get(self.sort)), reverse=self.order == "desc")
            rows = present + missing
        self.total = len(rows)
        try:
            self.size = min(max(1, int(args.get("per", PAGE_SIZE))), MAX_PAGE_SIZE)
        except ValueError:
            self.size = PAGE_SIZE
        self.pages = max(1, math.ceil(self.total / self.size))
        try:
            self.page = min(max(1, int(args.get("page", 1))), self.pages)
        except ValueError:
            self.page = 1
        self.first = (self.page - 1) * self.size
        self.rows = rows[self.first:self.first + self.size]
        self.states = sorted({r["state"] for r in results.rows})

    def heading(self, column: str) -> str:
        if column == "objective" and self.results.objective:
            return f"{self.results.objective['name']} ({self.results.objective.get('goal', 'max')})"
        return column.split(".", 1)[1] if column.startswith(("param.", "metric.")) else column

    def numeric(self, column: str) -> bool:
        return column in ("rank", "seconds", "objective") or column.startswith("metric.")

    def aria_sort(self, column: str) -> str:
        if column != self.sort:
            return "none"
        return "descending" if self.order == "desc" else "ascending"

    def link(self, **changes: Any) -> Markup | str:
        values = {"q": self.query, "state": self.state, "sort": self.sort, "order": self.order,
                  "page": self.page, "per": self.size}
        values.update(changes)
        defaults = {"q": "", "state": "", "sort": "rank", "order": "asc", "page": 1, "per": PAGE_SIZE}
        shown = {k: v for k, v in values.items() if v != defaults[k]}
        return "?" + urlencode(shown) if shown else "?"

    def sort_link(self, column: str) -> Markup | str:
        order = "desc" if column == self.sort and self.order == "asc" else "asc"
        return self.link(sort=column, order=order, page=1)


def _sort_key(value: Any) -> tuple:
    if isinstance(value, bool):
        return (1, str(value))
    if isinstance(value, (int, float)):
        return (0, value)
    return (1, _text(value))
