"""Shared by the faice ui tests: a started ``faice ui``, headless Chromium, and run directories.

The run directories are the records every engine writes (through the records API): the
ranked sweep of tests/support/ranked_run.py (known winner), or a synthetic run of any size.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import requests
from ranked_run import WINNER, make_run, winner_id  # noqa: F401  (re-exported)

from faice.pipeline.records import BatchState, RunState, new_batch_record
from faice.pipeline.rundir import RunDir

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


@dataclass
class UiServer:
    proc: subprocess.Popen
    url: str  # with the token, when one was printed
    log: Path

    @property
    def origin(self) -> str:
        return re.match(r"https?://[^/]+", self.url).group(0)

    def get(self, path: str, **kwargs) -> requests.Response:
        return requests.get(self.origin + path, timeout=30, **kwargs)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_ui(log: Path, *args: str, host: str = "127.0.0.1") -> UiServer:
    """``faice ui ARGS --host HOST --port 0``; returns once it answers (URL from its stderr)."""
    handle = open(log, "wb")  # noqa: SIM115  (kept open by the child)
    proc = subprocess.Popen([sys.executable, "-m", "faice", "ui", *args, "--host", host, "--port", "0"],
                            stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 30
    while time.time() < deadline:
        found = re.search(r"faice ui: (http://\S+)", log.read_text(errors="replace"))
        if found:
            server = UiServer(proc, found.group(1), log)
            try:
                requests.get(server.url, timeout=2)
                return server
            except requests.ConnectionError:
                pass
        if proc.poll() is not None:
            raise AssertionError(f"faice ui exited with {proc.returncode}:\n{log.read_text()}")
        time.sleep(0.1)
    proc.kill()
    raise AssertionError("faice ui did not start:\n" + log.read_text())


def synthetic_run(outdir: Path, count: int, *, running: int = 0, records: int = 50) -> None:
    """A run of ``count`` batches with metrics in run.json (as a finished sweep writes them);
    the last ``running`` are still running. Batch records of the first ``records`` and the
    running ones."""
    entries = []
    for index in range(count):
        batch_id = f"s-{index:08d}"
        lr = 10 ** (-4 + 4 * ((index * 7919) % count) / count)
        value = round(0.9 - abs(lr - 0.03) - (index % 13) / 1000, 6)
        state = BatchState.RUNNING if index >= count - running else BatchState.SUCCEEDED
        entry = {"id": batch_id, "index": index, "state": state.value,
                 "parameters": {"learning_rate": lr, "seed": index % 5}, "failureClass": None, "message": None,
                 "gpus": [], "seconds": 10.0 + index % 17}
        if state is BatchState.SUCCEEDED:
            entry["metrics"] = {"objective": {"name": "val_accuracy", "goal": "max", "value": value},
                                "final": {"val_accuracy": value, "loss": 1 - value}}
        entries.append(entry)
        if index < records or state is BatchState.RUNNING:
            record = new_batch_record(batch_id, index, entry["parameters"], run_id="synthetic", command=["train"],
                                      state=state)
            record.metrics = entry.get("metrics")
            record.timings = {"total": entry["seconds"]}
            RunDir(outdir).write_record(record)
    RunDir(outdir).write_run({"runId": "synthetic", "started": "2026-12-06T10:00:00Z"}, entries,
                     phase=RunState.RUNNING if running else None)


def finish_batches(outdir: Path, batch_ids: list[str], value: float | None = None) -> None:
    """Batches of a running run end (succeeded, with ``value`` as their objective when given)
    and the run record is rebuilt, as an engine does."""
    run = RunDir(outdir)
    for batch_id in batch_ids:
        record = run.read_record(batch_id)
        record.state = BatchState.SUCCEEDED
        if value is not None:
            record.metrics = {"objective": {"name": "val_accuracy", "goal": "max", "value": value},
                              "final": {"val_accuracy": value}}
        run.write_record(record)
    run.rebuild()


def eventually(check, timeout: float = 15.0):
    """``check()``'s first true value (faice ui reads a changed run within a moment)."""
    deadline = time.time() + timeout
    while True:
        value = check()
        if value or time.time() > deadline:
            return value
        time.sleep(0.1)


def chromium_available() -> bool:
    return Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists() and shutil.which(CHROMEDRIVER) is not None


def new_browser():
    """Debian's Chromium, headless, driven by Debian's chromium-driver through Selenium."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1400,1800", "--no-first-run", "--disable-background-networking"):
        options.add_argument(argument)
    options.binary_location = CHROMIUM
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
