"""Which batch won: a table of a run directory's batches, ranked by the metrics objective.

Local, agency and Slurm runs leave the same records (``run.json`` and
``batches/<id>/result.json``); this module reads them (fast enough for 10,000 batches), turns
each batch into one flat row (``param.NAME``, ``metric.NAME``: loads straight into pandas)
and renders the rows as text, CSV, JSON or Markdown, or plots a metric. The CLI command is
``faice results`` (faice/cli/commands/results.py); nothing here parses arguments.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from faice.errors import FaiceError
from faice.files import dumps_json, save_png
from faice.pipeline.rundir import RunDir, is_batch_id
from faice.untrusted import csv_cell, for_terminal, markdown_cell, mlflow_name

FORMATS = ("table", "csv", "json", "markdown")
# rank groups: succeeded with a value, other non-failed states with a value, failed with a value, no value
_FAILED = ("failed", "cancelled", "stopped")
_FINAL = ("succeeded", "failed", "cancelled", "stopped")
_BASE_COLUMNS = ("rank", "best", "batch", "index", "state", "seconds", "objective", "failure", "message")
# A search's rows also say which trial each batch was, where it came from (startup, sampler, or
# again: re-proposed after an interruption) and what stopped it (``asha at step 3``).
TRIAL_COLUMNS = ("trial", "origin", "stoppedBy")


@dataclass
class Results:
    """The ranked rows of one run; ``objective`` is None when no batch reported one."""

    outdir: Path
    objective: dict[str, Any] | None
    parameters: list[str]
    metrics: list[str]
    rows: list[dict[str, Any]] = field(default_factory=list)
    series: dict[str, dict[str, Any]] = field(default_factory=dict)  # batch id -> series read now
    dropped: list[str] = field(default_factory=list)  # batch dirs of an earlier sweep, not ranked
    search: bool = False  # a sweep.search: the rows have the trial columns (TRIAL_COLUMNS)

    @property
    def best(self) -> dict[str, Any] | None:
        return next((row for row in self.rows if row["best"]), None)

    def columns(self) -> list[str]:
        head = ["rank", "best", "batch", "index", *(TRIAL_COLUMNS[:2] if self.search else ()),
                "state", "seconds", "objective"]
        tail = [*(TRIAL_COLUMNS[2:] if self.search else ()), "failure", "message"]
        return head + [f"param.{p}" for p in self.parameters] + [f"metric.{m}" for m in self.metrics] + tail


# ---------------------------------------------------------------- reading


def read_records(outdir: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Every batch of a run directory as a record: run.json's entry when it is final and holds
    the metrics summary (one file for the whole run: fast), else ``batches/<id>/result.json``,
    else run.json's entry (pending, or on a node that has not written yet); and the batch
    directories run.json does not list (an earlier version of the sweep that ``--resume``
    kept: not part of this run). FaiceError when ``outdir`` is no run directory."""
    rundir = RunDir(outdir)
    run = rundir.read_run()
    if run is None and not rundir.batches.is_dir():
        raise FaiceError(f"{outdir}: not a faice run directory (no {rundir.run_file.name}, no batches/)",
                         hint="give the --outdir of a faice exec run")
    listed = run.get("batches") if run is not None else None
    entries = {str(e.get("id")): e for e in listed if isinstance(e, dict)} if isinstance(listed, list) else {}
    records: list[dict[str, Any]] = []
    seen: set[str] = set()
    dropped: list[str] = []
    for batch_id, entry in entries.items():
        if entry.get("state") in _FINAL and isinstance(entry.get("metrics"), dict):
            records.append(_entry_record(entry))
            seen.add(batch_id)
    for name, record in rundir.scan_records(skip=seen):
        if entries and name not in entries:
            dropped.append(name)
            continue
        if record is not None:
            record.setdefault("batchId", name)
            records.append(record)
            seen.add(str(record.get("batchId")))
    records.extend(_entry_record(e) for batch_id, e in entries.items() if batch_id not in seen)
    return records, sorted(dropped)


def _entry_record(entry: dict[str, Any]) -> dict[str, Any]:
    """A run.json entry in the shape of a batch record (the fields results use)."""
    return {"batchId": entry.get("id"), "batchIndex": entry.get("index"),
            "state": entry.get("state") or "pending", "parameters": entry.get("parameters") or {},
            "failureClass": entry.get("failureClass"), "message": entry.get("message"),
            "timings": {"total": entry.get("seconds")}, "metrics": entry.get("metrics")}


def entry_metrics(result: dict[str, Any] | None) -> dict[str, Any] | None:
    """What a run.json entry should hold of a batch's metrics result, so that ``faice results``
    reads one file instead of every result.json: the objective and the final values."""
    if not isinstance(result, dict):
        return None
    return {"objective": result.get("objective"), "final": result.get("final") or {}}


# ---------------------------------------------------------------- ranking


def build_results(outdir: Path, records: Iterable[dict[str, Any]], *, objective: dict[str, Any] | None = None) -> Results:
    """Rows ranked by ``objective`` ({name, goal}; default: what the batches recorded; without
    a goal, the goal recorded for that metric, else max).

    Succeeded batches with a value come first, best first; then running ones with a value,
    then failed, cancelled or stopped ones with a value; batches without a value last (by index).
    """
    records = list(records)
    objectives = [dict(r["metrics"]["objective"]) for r in records
                  if isinstance(r.get("metrics"), dict) and isinstance(r["metrics"].get("objective"), dict)
                  and r["metrics"]["objective"].get("name")]
    if objective is None:
        objective = objectives[0] if objectives else None
    elif not objective.get("goal"):  # a metric named without a goal: the recorded one's, else max
        goal = next((o.get("goal") for o in objectives if o["name"] == objective["name"]), None)
        objective = {**objective, "goal": goal if goal in ("min", "max") else "max"}
    parameters: dict[str, None] = {}
    metrics: dict[str, None] = {}
    if objective:
        metrics[objective["name"]] = None
    rows = []
    series: dict[str, dict[str, Any]] = {}
    for record in records:
        row = _row(record, objective)
        recorded = record.get("metrics")
        if isinstance(recorded, dict) and isinstance(recorded.get("series"), dict):
            series[str(row["batch"])] = recorded["series"]
        for name in row["_parameters"]:
            parameters.setdefault(name, None)
        for name in row["_metrics"]:
            metrics.setdefault(name, None)
        rows.append(row)
    maximise = objective is not None and objective.get("goal", "max") == "max"
    rows.sort(key=lambda row: _rank_key(row, maximise))
    results = Results(Path(outdir), objective, list(parameters), list(metrics), series=series)
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
        row["best"] = rank == 1 and row["_group"] <= 1
        flat = {"rank": rank, "best": row["best"], "batch": row["batch"], "index": row["index"],
                "state": row["state"], "seconds": row["seconds"], "objective": row["objective"]}
        values = row["_parameters"]
        flat.update({f"param.{p}": values.get(p) for p in results.parameters})
        values = row["_metrics"]
        flat.update({f"metric.{m}": values.get(m) for m in results.metrics})
        flat.update({"failure": row["failure"], "message": row["message"]})
        results.rows.append(flat)
    return results


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _row(record: dict[str, Any], objective: dict[str, Any] | None) -> dict[str, Any]:
    metrics = _mapping(record.get("metrics"))
    final = _mapping(metrics.get("final"))
    value = None
    if objective:
        recorded = _mapping(metrics.get("objective"))
        if recorded.get("name") == objective["name"] and recorded.get("scope", "final") == objective.get("scope", "final"):
            value = recorded.get("value")
        elif objective.get("scope") == "best" and isinstance(metrics.get("best"), dict):
            value = metrics["best"].get(objective["name"])
        else:
            value = final.get(objective["name"])
    value = value if _finite(value) else None
    state = str(record.get("state") or "pending")
    if value is None:
        group = 3
    elif state == "succeeded":
        group = 0
    elif state in _FAILED:
        group = 2
    else:
        group = 1
    timings = _mapping(record.get("timings"))
    parameters = _mapping(record.get("parameters"))
    return {
        "batch": record.get("batchId"),
        "index": record.get("batchIndex"),
        "state": state,
        "seconds": timings.get("total"),
        "objective": value,
        "failure": record.get("failureClass"),
        "message": record.get("message"),
        "_parameters": parameters,
        "_metrics": {k: v for k, v in final.items() if v is None or _finite(v)},
        "_group": group,
    }


def _rank_key(row: dict[str, Any], maximise: bool) -> tuple:
    index = row["index"] if isinstance(row["index"], int) else math.inf
    value = row["objective"]
    if value is None:
        return (row["_group"], 0.0, index)
    return (row["_group"], -value if maximise else value, index)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def load_results(outdir: Path, *, objective: dict[str, Any] | None = None, spec: Any = None) -> Results:
    """:func:`build_results` of :func:`read_records` of ``outdir``; with ``spec`` (a
    :class:`~faice.red.metrics.MetricsSpec`) the metrics of batches whose record has none are
    read from their outputs and stdout now (runs made before metrics were recorded)."""
    outdir = Path(outdir)
    records, dropped = read_records(outdir)
    if spec is not None:
        for record in records:
            if not isinstance(record.get("metrics"), dict):
                record["metrics"] = read_batch_metrics(outdir, record, spec)
    if spec is not None and (objective is None or (not objective.get("goal")
                                                   and objective["name"] == spec.objective.name)):
        objective = spec.objective.as_dict()
    results = build_results(outdir, records, objective=objective)
    results.dropped = dropped
    add_trials(results)
    return results


def add_trials(results: Results) -> None:
    """A search run's rows get the trial columns from its log (a batch that is no trial of it,
    none: ``-`` in the table, empty in CSV, null in JSON)."""
    from faice.pipeline.trials import read_search, trial_rows

    search = read_search(results.outdir)
    if search is None:
        return
    trials = {str(row["batch"]): row for row in trial_rows(search)}
    results.search = True
    for position, row in enumerate(results.rows):
        trial = trials.get(str(row["batch"]), {})
        values = {"trial": trial.get("trial"), "origin": trial.get("origin"), "stoppedBy": trial.get("stoppedBy")}
        # Rebuilt in the order of columns(): JSON objects list their keys as CSV does.
        results.rows[position] = {column: values[column] if column in values else row.get(column)
                                  for column in results.columns()}


def read_batch_metrics(outdir: Path, record: dict[str, Any], spec: Any) -> dict[str, Any] | None:
    """The metrics result of one finished batch, read from its run directory."""
    from faice.pipeline.metrics import MetricsReader

    batch_id = str(record.get("batchId"))
    if not is_batch_id(batch_id):
        return None
    files = RunDir(outdir).batch(batch_id)
    if not files.path.is_dir():
        return None
    index = record.get("batchIndex")
    reader = MetricsReader.for_batch(
        spec, outputs_dir=files.outputs, stdout_file=files.stdout,
        parameters=record.get("parameters") if isinstance(record.get("parameters"), dict) else {},
        index=index if isinstance(index, int) else 0,
    )
    return reader.finish()


# ---------------------------------------------------------------- rendering


def render(results: Results, fmt: str = "table", *, top: int | None = None) -> str:
    """The rows as ``table`` (aligned text with a line naming the winner), ``csv``, ``json``
    (a list of flat objects) or ``markdown``."""
    rows = results.rows[:top] if top else results.rows
    columns = results.columns()
    if fmt == "json":
        return dumps_json(rows, indent=1, default=str) + "\n"
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow([csv_cell(c) for c in columns])
        for row in rows:
            writer.writerow([_csv_value(row.get(c)) for c in columns])
        return out.getvalue()
    hidden = {"best", "message", *TRIAL_COLUMNS}  # a search's trials get a table of their own
    if results.objective and results.objective.get("scope", "final") == "final":
        hidden.add(f"metric.{results.objective['name']}")  # the objective column shows it
    shown = [c for c in columns if c not in hidden and any(row.get(c) is not None for row in rows)]
    shown = ["best", *shown] if "rank" in shown else shown
    header = [_heading(c, results) for c in shown]
    body = [[_text(row.get(c), c) for c in shown] for row in rows]
    if fmt == "markdown":
        lines = ["| " + " | ".join(markdown_cell(h) for h in header) + " |",
                 "|" + "|".join(" --- " for _ in header) + "|"]
        lines += ["| " + " | ".join(markdown_cell(cell) for cell in cells) + " |" for cells in body]
        return "\n".join(lines) + "\n\n" + markdown_cell(winner_line(results)) + "\n"
    if fmt != "table":
        raise FaiceError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    header = [for_terminal(h) for h in header]
    body = [[for_terminal(cell) for cell in cells] for cells in body]
    widths = [max(len(h), *(len(cells[i]) for cells in body)) if body else len(h) for i, h in enumerate(header)]
    numeric = [c in ("rank", "index", "seconds", "objective") or c.startswith("metric.")
               or all(_finite(row.get(c)) or row.get(c) is None for row in rows) for c in shown]
    lines = ["  ".join(h.rjust(w) if n else h.ljust(w) for h, w, n in zip(header, widths, numeric, strict=True)).rstrip()]
    for cells in body:
        lines.append("  ".join(c.rjust(w) if n else c.ljust(w)
                               for c, w, n in zip(cells, widths, numeric, strict=True)).rstrip())
    if top and len(results.rows) > top:
        lines.append(f"… {len(results.rows) - top} more batches (without --top: all)")
    return "\n".join(lines) + "\n\n" + for_terminal(winner_line(results)) + "\n"


def winner_line(results: Results) -> str:
    """One sentence naming the best batch and its parameters (or why there is none)."""
    if not results.objective:
        return "no metrics objective recorded: batches in run order (add metrics to the RED file, or --objective)"
    name, goal = results.objective["name"], results.objective.get("goal", "max")
    best = results.best
    if best is None:
        return f"no batch has a value of {name} yet"
    parameters = ", ".join(f"{p}={_text(best.get(f'param.{p}'), 'param')}" for p in results.parameters)
    ties = sum(1 for row in results.rows if row is not best and row.get("objective") == best["objective"])
    tied = f"; tied with {ties} other batch{'es' if ties != 1 else ''}" if ties else ""
    return (f"best: {best['batch']}" + (f" ({parameters})" if parameters else "")
            + f" with {name} = {_text(best['objective'], 'objective')} ({goal}){tied}")


def _heading(column: str, results: Results) -> str:
    if column == "best":
        return ""
    if column == "objective" and results.objective:
        return f"{results.objective['name']} ({results.objective.get('goal', 'max')})"
    if column.startswith(("param.", "metric.")):
        name = column.split(".", 1)[1]
        return column if name in _BASE_COLUMNS else name
    return column


def _text(value: Any, column: str) -> str:
    if column == "best":
        return "*" if value else ""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}" if column == "seconds" else f"{value:.6g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return csv_cell(json.dumps(value, separators=(",", ":")))
    return csv_cell(value)


# ---------------------------------------------------------------- plots


def plot(results: Results, metric: str, directory: Path) -> list[Path]:
    """PNGs of ``metric``: over steps per batch, and its final value against each swept
    parameter. FaiceError with an install hint when matplotlib is missing."""
    plt = pyplot()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    safe = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in metric)
    figure, axes = plt.subplots(figsize=(8, 5))
    drawn = 0
    for row in results.rows:
        series = results.series.get(str(row["batch"]), {}).get(metric) or batch_series(
            results.outdir, str(row["batch"]), metric)
        points = [(s, v) for s, v in series if _finite(v)]
        if points:
            label = ", ".join(f"{p}={_text(row.get(f'param.{p}'), 'param')}" for p in results.parameters) or row["batch"]
            axes.plot([s for s, _ in points], [v for _, v in points], marker="." if len(points) < 50 else None,
                      linewidth=2.5 if row["best"] else 1, label=("* " if row["best"] else "") + str(label))
            drawn += 1
    if drawn:
        axes.set_xlabel("step")
        axes.set_ylabel(metric)
        axes.set_title(f"{metric} per batch")
        if drawn <= 20:
            axes.legend(fontsize="small")
        path = directory / f"{safe}-steps.png"
        save_png(figure, path)
        written.append(path)
    plt.close(figure)
    column = f"metric.{metric}"
    for parameter in results.parameters:
        pairs = [(row.get(f"param.{parameter}"), row.get(column)) for row in results.rows]
        pairs = [(x, y) for x, y in pairs if x is not None and _finite(y)]
        if not pairs:
            continue
        figure, axes = plt.subplots(figsize=(6, 4))
        numeric = all(_finite(x) for x, _ in pairs)
        xs: list[Any] = [x if numeric else str(x) for x, _ in pairs]
        axes.scatter(xs, [y for _, y in pairs])
        if numeric and min(xs) > 0 and max(xs) / min(xs) >= 100:
            axes.set_xscale("log")
        axes.set_xlabel(parameter)
        axes.set_ylabel(f"final {metric}")
        path = directory / f"{safe}-vs-{''.join(ch if ch.isalnum() or ch in '._-' else '_' for ch in parameter)}.png"
        save_png(figure, path)
        plt.close(figure)
        written.append(path)
    if not written:
        raise FaiceError(f"no batch of {results.outdir} has values of {metric!r} to plot",
                         hint=f"metrics recorded: {', '.join(results.metrics) or 'none'}")
    return written


def batch_series(outdir: Path, batch_id: str, metric: str) -> Sequence[Sequence[Any]]:
    """The step series of one metric of one batch (metrics.json, else the record)."""
    if not is_batch_id(batch_id):
        return []
    data = RunDir(outdir).read_metrics(batch_id) or {}
    series = data.get("series")
    if isinstance(series, dict) and isinstance(series.get(metric), list):
        return [p for p in series[metric] if isinstance(p, list) and len(p) == 2]
    return []


def pyplot():
    """matplotlib's pyplot with a file-only backend; FaiceError when it is not installed."""
    try:
        import matplotlib
    except ImportError:
        raise FaiceError("--plot needs matplotlib, which is not installed",
                         hint="pip install 'faice[plot]'  (or: pip install matplotlib)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# ---------------------------------------------------------------- MLflow export


def to_mlflow(results: Results, uri: str = "./mlruns", *, experiment: str | None = None,
              warn: Callable[[str], None] | None = None) -> dict[str, int]:
    """One MLflow run per batch (parameters, final metrics, every step of the series, the
    record as an artifact, tags ``faice.*``) in the experiment ``experiment`` (default:
    ``faice <run directory name>``). Batches exported before (tag ``faice.batchId``) are
    skipped, so exporting a growing run again adds only the new batches. A metric or parameter
    name MLflow refuses is exported under a name it accepts, or skipped; ``warn`` is told which.
    Returns ``{"exported": n, "skipped": m}``; FaiceError with a hint without mlflow."""
    require_mlflow()
    from mlflow.exceptions import MlflowException

    if "://" not in uri and not uri.startswith("file:"):
        # a local directory: MLflow 3 keeps its file store for this, behind an opt-in
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        uri = Path(uri).resolve().as_uri()
    elif uri.startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    try:
        return _export(results, uri, experiment, warn)
    except MlflowException as exc:  # a store that refuses a value: say so, no traceback
        raise FaiceError(f"MLflow export to {uri} failed: {for_terminal(exc.message)[:500]}") from None


def _export(results: Results, uri: str, experiment: str | None, warn: Callable[[str], None] | None) -> dict[str, int]:
    import time

    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    name = experiment or f"faice {results.outdir.resolve().name}"
    found = client.get_experiment_by_name(name)
    experiment_id = found.experiment_id if found else client.create_experiment(name)
    params_named = _mlflow_names("parameter", results.parameters, warn)
    metrics_named = _mlflow_names("metric", results.metrics, warn)
    done = {run.data.tags.get("faice.batchId") for run in client.search_runs([experiment_id], max_results=50_000)}
    counts = {"exported": 0, "skipped": 0}
    now = int(time.time() * 1000)
    for row in results.rows:
        batch_id = str(row["batch"])
        if batch_id in done:
            counts["skipped"] += 1
            continue
        tags = {"faice.batchId": batch_id, "faice.state": str(row["state"]), "faice.rank": str(row["rank"]),
                "faice.best": str(bool(row["best"])).lower(), "faice.outdir": str(results.outdir.resolve())}
        run = client.create_run(experiment_id, run_name=batch_id, tags=tags)
        run_id = run.info.run_id
        params = [Param(named, _mlflow_text(row.get(f"param.{p}"))) for p, named in params_named.items()
                  if row.get(f"param.{p}") is not None]
        metrics = []
        logged: set[str] = set()
        for metric, named in metrics_named.items():
            series = results.series.get(batch_id, {}).get(metric) or batch_series(results.outdir, batch_id, metric)
            for step, value in series:
                if _finite(value) and _finite(step):
                    metrics.append(Metric(named, float(value), now, int(round(step))))
                    logged.add(metric)
            final: Any = row.get(f"metric.{metric}")
            if metric not in logged and _finite(final):
                metrics.append(Metric(named, float(final), now, 0))
        if _finite(row.get("seconds")):
            metrics.append(Metric("faice.seconds", float(row["seconds"]), now, 0))
        for start in range(0, len(params), 100):  # MLflow's limits per call
            client.log_batch(run_id, params=params[start:start + 100])
        for start in range(0, len(metrics), 1000):
            client.log_batch(run_id, metrics=metrics[start:start + 1000])
        record = RunDir(results.outdir).batch(batch_id).record
        if is_batch_id(batch_id) and record.is_file():
            client.log_artifact(run_id, str(record))
        status = {"succeeded": "FINISHED", "failed": "FAILED", "cancelled": "KILLED",
                  "stopped": "KILLED"}.get(str(row["state"]), "RUNNING")
        if status != "RUNNING":
            client.set_terminated(run_id, status)
        counts["exported"] += 1
    return counts


def require_mlflow() -> None:
    """FaiceError with an install hint when MLflow's client is not installed."""
    try:
        import mlflow.entities
        import mlflow.tracking  # noqa: F401
    except ImportError:
        raise FaiceError("--to-mlflow needs MLflow, which is not installed",
                         hint="pip install 'faice[mlflow]'  (or: pip install mlflow-skinny)") from None


def _mlflow_names(kind: str, names: Iterable[str], warn: Callable[[str], None] | None) -> dict[str, str]:
    """Each name → the name MLflow gets (renamed where MLflow refuses it); names with no
    usable or a clashing form are left out, and ``warn`` says so."""
    named: dict[str, str] = {}
    taken: set[str] = {"faice.seconds"} if kind == "metric" else set()
    for name in names:
        mapped = mlflow_name(name)
        if mapped is None or mapped in taken:
            if warn:
                why = "MLflow has no name for it" if mapped is None else f"its MLflow name {mapped!r} is taken"
                warn(f"{kind} '{for_terminal(name)[:80]}' not exported to MLflow: {why}")
            continue
        if mapped != name and warn:
            warn(f"{kind} '{for_terminal(name)[:80]}' exported to MLflow as {mapped!r} (a name MLflow accepts)")
        named[name] = mapped
        taken.add(mapped)
    return named


def _mlflow_text(value: Any) -> str:
    text = json.dumps(value, separators=(",", ":")) if isinstance(value, (dict, list)) else str(value)
    return text[:6000]
