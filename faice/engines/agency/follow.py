"""Following batches on an agency until they are final: a live table on a terminal, one
plain line per state change otherwise (logs, CI). Progress goes to stderr so that stdout
stays machine-readable."""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, TextIO

from faice.engines.agency.client import FINAL, AgencyClient

STYLE = {"succeeded": "green", "failed": "red", "cancelled": "yellow", "stopped": "magenta", "processing": "cyan",
         "scheduled": "blue"}
ORDER = ("succeeded", "stopped", "failed", "cancelled", "processing", "scheduled", "registered")


def summary(batches: list[dict[str, Any]]) -> str:
    counts = Counter(b["state"] for b in batches)
    parts = [f"{counts[s]} {s}" for s in ORDER if counts[s]]
    return f"{len(batches)} batch{'es' if len(batches) != 1 else ''}: " + ", ".join(parts)


class ShownStates:
    """The state shown for each batch: CC-Agency's, except that a batch faice's server stopped
    early (CC-Agency's ``cancelled``) shows as ``stopped``, as its record says (one request per
    such batch)."""

    def __init__(self, client: AgencyClient) -> None:
        self.client = client
        self.stopped: dict[str, bool] = {}

    def __call__(self, batches: list[dict[str, Any]]) -> list[dict[str, Any]]:
        from faice.pipeline.records import agency_batch_record

        shown = []
        for batch in batches:
            if batch["state"] == "cancelled":
                if batch["_id"] not in self.stopped:
                    record = agency_batch_record(self.client.batch(batch["_id"]))
                    self.stopped[batch["_id"]] = record.get("state") == "stopped"
                if self.stopped[batch["_id"]]:
                    batch = {**batch, "state": "stopped"}
            shown.append(batch)
        return shown


def follow(client: AgencyClient, experiment_id: str, *, stream: TextIO | None = None, interval: float = 1.0,
           live: bool | None = None, until: Callable[[], bool] | None = None) -> list[dict[str, Any]]:
    """Poll until every batch of the experiment is final (and ``until()``, when given: a search
    is over only when the server proposes no more trials); return the final batch list."""
    stream = stream or sys.stderr
    if live is None:
        live = stream.isatty()
    done = _done(until)
    if live:
        return _follow_live(client, experiment_id, stream, interval, done)
    seen: dict[str, str] = {}
    shown = ShownStates(client)
    while True:
        batches = client.experiment_batches(experiment_id)
        for batch in shown(batches):
            if seen.get(batch["_id"]) != batch["state"]:
                seen[batch["_id"]] = batch["state"]
                stamp = time.strftime("%H:%M:%S")
                print(f"{stamp} batch {batch.get('batchesListIndex', 0)} {batch['_id']}: {batch['state']}", file=stream, flush=True)
        if done(batches):
            print(summary(shown(batches)), file=stream, flush=True)
            return batches
        time.sleep(interval)


def _done(until: Callable[[], bool] | None) -> Callable[[list[dict[str, Any]]], bool]:
    def done(batches: list[dict[str, Any]]) -> bool:
        if not all(b["state"] in FINAL for b in batches):
            return False
        return until() if until is not None else bool(batches)

    return done


def _follow_live(client: AgencyClient, experiment_id: str, stream: TextIO, interval: float,
                 done: Callable[[list[dict[str, Any]]], bool]) -> list[dict[str, Any]]:
    from rich.console import Console
    from rich.live import Live
    from rich.table import Table

    console = Console(file=stream)

    def render(batches: list[dict[str, Any]]) -> Table:
        table = Table(title=f"experiment {experiment_id} — {summary(batches) if batches else 'waiting'}", expand=False)
        for column in ("#", "batch", "state", "attempts"):
            table.add_column(column)
        for batch in batches:
            state = batch["state"]
            table.add_row(
                str(batch.get("batchesListIndex", 0)), batch["_id"], f"[{STYLE.get(state, 'white')}]{state}[/]",
                str(len([h for h in batch.get("history", []) if h.get("state") == "scheduled"])),
            )
        return table

    shown = ShownStates(client)
    with Live(render([]), console=console, refresh_per_second=4, transient=False) as display:
        while True:
            batches = client.experiment_batches(experiment_id)
            display.update(render(shown(batches)))
            if done(batches):
                return batches
            time.sleep(interval)
