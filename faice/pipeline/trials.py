"""A search run's trials for ``faice results``: in the order they were proposed, where each came
from (the sampler's random ``startup`` or the ``sampler`` itself, ``again`` for one re-proposed
after an interruption), its value, the best so far, and what stopped it; ``--plot`` adds the
optimisation history and, when Optuna is installed, the parameters' importance.

Everything is read from the search's log ``search/trials.jsonl`` (written by
:mod:`faice.pipeline.search`); only the importance plot needs Optuna.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from faice.files import save_png
from faice.pipeline.search import read_log
from faice.untrusted import for_terminal, markdown_cell

STOP_REASON = re.compile(r"stopped early by the (\w+) rule at step (\S+?)[ :]")


def read_search(outdir: Path) -> dict[str, Any] | None:
    """The search record of a run directory, None when the run was no search."""
    header, trials = read_log(Path(outdir))
    if header is None:
        return None
    return {**header, "trials": trials}


def trial_rows(search: dict[str, Any]) -> list[dict[str, Any]]:
    """One flat row per trial, in trial order, with the best value so far."""
    objective: dict[str, Any] = search["objective"] if isinstance(search.get("objective"), dict) else {}
    maximise = objective.get("goal", "max") == "max"
    best: float | None = None
    rows = []
    for trial in sorted(search["trials"], key=lambda t: t.get("trial") if isinstance(t.get("trial"), int) else 0):
        value = trial.get("value")
        value = value if isinstance(value, (int, float)) and math.isfinite(value) else None
        if value is not None and trial.get("state") == "succeeded" and (
                best is None or (value > best if maximise else value < best)):
            best = value
        rows.append({"trial": trial.get("trial"), "batch": trial.get("batch"), "origin": trial.get("origin"),
                     "state": trial.get("state"), "value": value, "bestSoFar": best,
                     "stoppedBy": stopped_by(trial.get("message")),
                     "parameters": trial.get("parameters") if isinstance(trial.get("parameters"), dict) else {}})
    return rows


NOT_COUNTED = ("cancelled", "interrupted")  # a trial that never ended on its own: proposed again on --resume


def counted(rows: list[dict[str, Any]]) -> int:
    """The trials that count towards the budget: ended, and not cancelled or interrupted."""
    return sum(1 for row in rows if row.get("state") not in ("running", None, *NOT_COUNTED))


def stopped_by(message: Any) -> str | None:
    """``asha at step 3`` from a stopped batch's message."""
    match = STOP_REASON.search(message) if isinstance(message, str) else None
    return f"{match.group(1)} at step {match.group(2)}" if match else None


def render_trials(search: dict[str, Any], fmt: str = "table") -> str:
    """The trials in order as an aligned table (or Markdown), after the ranked batches."""
    rows = trial_rows(search)
    names = sorted({name for row in rows for name in row["parameters"]})
    header = ["trial", "origin", "state", "value", "best so far", *names, "stopped by", "batch"]
    body = [[_text(row["trial"]), _text(row["origin"]), _text(row["state"]), _text(row["value"]),
             _text(row["bestSoFar"]), *(_text(row["parameters"].get(n)) for n in names),
             _text(row["stoppedBy"]), _text(row["batch"])] for row in rows]
    told = counted(rows)
    again = sum(1 for row in rows if row["state"] in NOT_COUNTED)
    title = (f"search ({search.get('algorithm', '?')}): {told} of {search.get('budget', len(rows))} trials, "
             "in the order they were proposed"
             + (f" ({again} cancelled or interrupted: proposed again, not counted)" if again else ""))
    if fmt == "markdown":
        lines = ["| " + " | ".join(markdown_cell(h) for h in header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
        lines += ["| " + " | ".join(markdown_cell(c) for c in cells) + " |" for cells in body]
        return "\n" + markdown_cell(title) + "\n\n" + "\n".join(lines) + "\n"
    header = [for_terminal(h) for h in header]
    body = [[for_terminal(c) for c in cells] for cells in body]
    widths = [max(len(h), *(len(cells[i]) for cells in body)) if body else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip() for cells in body]
    return "\n" + for_terminal(title) + "\n" + "\n".join(lines) + "\n"


def _text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def plot_search(outdir: Path, search: dict[str, Any], directory: Path, pyplot: Any) -> list[Path]:
    """``search-history.png`` (each trial's value and the best so far, in trial order; stopped trials
    marked) and, when Optuna is installed, ``search-importance.png`` (fANOVA)."""
    rows = trial_rows(search)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    figure, axes = pyplot.subplots(figsize=(8, 5))
    done = [(r["trial"], r["value"]) for r in rows if r["value"] is not None and r["state"] == "succeeded"]
    stopped = [(r["trial"], r["value"]) for r in rows if r["value"] is not None and r["state"] == "stopped"]
    if done:
        axes.scatter([t for t, _ in done], [v for _, v in done], label="trial")
    if stopped:
        axes.scatter([t for t, _ in stopped], [v for _, v in stopped], marker="x", label="stopped (last value)")
    steps = [(r["trial"], r["bestSoFar"]) for r in rows if r["bestSoFar"] is not None]
    if steps:
        axes.step([t for t, _ in steps], [v for _, v in steps], where="post", color="black", label="best so far")
    objective: dict[str, Any] = search["objective"] if isinstance(search.get("objective"), dict) else {}
    axes.set_xlabel("trial")
    axes.set_ylabel(f"{objective.get('name', 'objective')} ({objective.get('goal', '?')})")
    axes.set_title(f"optimisation history ({search.get('algorithm', '?')})")
    axes.legend(fontsize="small")
    path = directory / "search-history.png"
    save_png(figure, path)
    pyplot.close(figure)
    written.append(path)
    importances = parameter_importance(outdir)
    if importances:
        figure, axes = pyplot.subplots(figsize=(6, 1 + 0.4 * len(importances)))
        names = list(importances)[::-1]
        axes.barh(names, [importances[n] for n in names])
        axes.set_xlabel("importance (fANOVA)")
        axes.set_title("parameter importance")
        path = directory / "search-importance.png"
        save_png(figure, path)
        pyplot.close(figure)
        written.append(path)
    return written


def parameter_importance(outdir: Path) -> dict[str, float]:
    """Each parameter's share of the objective's variance over the complete trials (Optuna's
    fANOVA); empty without Optuna or with fewer than two complete trials."""
    search = read_search(outdir)
    if search is None:
        return {}
    try:
        from faice.pipeline.search import distributions, require_optuna

        optuna = require_optuna()
        goal = (search.get("objective") or {}).get("goal", "max")
        space = distributions(optuna, {name: next(iter(d.items())) for name, d in search["parameters"].items()})
        study = optuna.create_study(direction="maximize" if goal == "max" else "minimize")
        for row in search["trials"]:
            parameters = row.get("parameters") or {}
            if row.get("sampler") != "complete" or set(parameters) != set(space):
                continue
            study.add_trial(optuna.trial.create_trial(params=parameters, distributions=space, value=float(row["value"])))
        if len(study.trials) < 2:
            return {}
        return {str(k): float(v) for k, v in optuna.importance.get_param_importances(study).items()}
    except Exception:
        return {}  # the importance is a bonus: the history and the table do not need it
