"""The runs of ``faice ui DIR…``: run directories of any engine, read through the records API.

A run is read again only when its run record changed on disk (its size, time or inode), and
then once for every page and tick that asks; a tick in between costs one ``stat``. Paths
that come from a request (batch ids, output file names) are checked against the run's own
batches and never leave the batch directory, whatever links its container left behind.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from faice.agency.ui.live import ChangeLog
from faice.agency.ui.source import (
    LOG_TAIL_BYTES,
    LogChunk,
    NotFound,
    OutputFile,
    RunSummary,
    RunView,
    changed_view,
    log_chunk,
    log_window,
    view_of,
)
from faice.descriptors import open_beneath
from faice.files import open_regular
from faice.pipeline import results as results_api
from faice.pipeline import search as search_api
from faice.pipeline.rundir import BatchDir, RunDir, is_batch_id

MAX_OUTPUTS = 1000  # files listed per batch
WATCH_SECONDS = 0.5  # how often the watcher looks at the run records of the runs being viewed
WATCH_FOR = 600.0  # a run nobody asked about for this long is no longer looked at


@dataclass
class _Loaded:
    key: tuple | None
    view: RunView


def _stat_key(path: Path) -> tuple | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_mtime_ns, info.st_size, info.st_ino)


def _is_run_dir(path: Path) -> bool:
    return RunDir(path).run_file.is_file()


class DirSource:
    """Run directories under ``roots`` (a run directory itself, or a directory of them, two
    levels deep at most).

    With ``watch``, a thread looks at the run record of each run asked about recently (one
    ``stat`` per run every :data:`WATCH_SECONDS`) and reads a changed run again in the
    background, so a page or a tick never waits for a 10,000-batch run to be read again; it
    gets the view of at most a moment ago. Without it, a changed run is read on request."""

    def __init__(self, roots: list[Path], *, watch: bool = False):
        self.roots = [Path(r) for r in roots]
        self._lock = threading.Lock()
        self._loading: dict[Path, threading.Lock] = {}
        self._loaded: dict[Path, _Loaded] = {}
        self._changes: dict[Path, ChangeLog] = {}
        self._asked: dict[Path, tuple[str, float]] = {}
        self._watch = watch
        self._watcher: threading.Thread | None = None

    # ------------------------------------------------------------ finding runs
    def _directories(self) -> dict[str, Path]:
        found: list[Path] = []
        for root in self.roots:
            if _is_run_dir(root):
                found.append(root)
                continue
            for child in _subdirs(root):
                if _is_run_dir(child):
                    found.append(child)
                else:
                    found.extend(grand for grand in _subdirs(child) if _is_run_dir(grand))
        named: dict[str, Path] = {}
        for path in found:
            name = path.resolve().name or "run"
            unique, n = name, 2
            while unique in named and named[unique] != path:
                unique, n = f"{name}~{n}", n + 1
            named[unique] = path
        return named

    def _path(self, run_id: str) -> Path:
        path = self._directories().get(run_id)
        if path is None:
            raise NotFound(f"no run {run_id!r}")
        return path

    # ------------------------------------------------------------ reading
    def _view(self, run_id: str, path: Path) -> RunView:
        with self._lock:
            loaded = self._loaded.get(path)
            self._asked[path] = (run_id, time.monotonic())
            if loaded is not None and self._watch:
                self._start_watcher()
                return loaded.view  # the watcher keeps it current
        if loaded is not None and loaded.key == _stat_key(RunDir(path).run_file):
            return loaded.view
        return self._load(run_id, path)

    def _load(self, run_id: str, path: Path) -> RunView:
        """Read the run again (one reader per run at a time; the others get its view)."""
        with self._lock:
            gate = self._loading.setdefault(path, threading.Lock())
        with gate:
            key = _stat_key(RunDir(path).run_file)
            with self._lock:
                loaded = self._loaded.get(path)
                if loaded is not None and loaded.key == key:
                    return loaded.view
            header = RunDir(path).read_run() or {}
            loaded_results = results_api.load_results(path)
            with self._lock:
                changes = self._changes.setdefault(path, ChangeLog())
                view = view_of(run_id, path.resolve().name, header, loaded_results, changes)
                view.trials = search_api.read_log(path)[1] or None
                self._loaded[path] = _Loaded(key, view)
                return view

    def _start_watcher(self) -> None:
        if self._watcher is None:
            self._watcher = threading.Thread(target=self._watch_loop, name="faice-ui-watch", daemon=True)
            self._watcher.start()

    def _watch_loop(self) -> None:
        while True:
            time.sleep(WATCH_SECONDS)
            now = time.monotonic()
            with self._lock:
                asked = {p: r for p, (r, t) in self._asked.items() if now - t < WATCH_FOR}
                current = {p: self._loaded[p].key for p in asked if p in self._loaded}
            for path, run_id in asked.items():
                if current.get(path) != _stat_key(RunDir(path).run_file):
                    try:
                        self._load(run_id, path)
                    except Exception:  # an unreadable moment; the next look tries again
                        continue

    def warm(self) -> None:
        """Read every run once (at start, so the first page of a large run is ready)."""
        self.runs()

    def runs(self, viewer: Any = None) -> list[RunSummary]:
        summaries = []
        for run_id, path in self._directories().items():
            try:
                summaries.append(self._view(run_id, path).summary)
            except Exception as exc:  # one unreadable run must not hide the others
                summaries.append(RunSummary(run_id, path.name, f"unreadable: {exc}", {}, None, None))
        return sorted(summaries, key=lambda s: s.started or "", reverse=True)

    def run(self, viewer: Any, run_id: str, *, since: int | None = None) -> RunView:
        path = self._path(run_id)
        view = self._view(run_id, path)
        with self._lock:
            return changed_view(view, self._changes[path], since)

    def _batch_dir(self, run_id: str, batch_id: str) -> tuple[Path, BatchDir]:
        """A batch of this run (its id checked against the run's own batches)."""
        path = self._path(run_id)
        view = self._view(run_id, path)
        if not is_batch_id(batch_id) or view.row(batch_id) is None:
            raise NotFound(f"no batch {batch_id!r} in run {run_id!r}")
        return path, RunDir(path).batch(batch_id)

    def batch(self, viewer: Any, run_id: str, batch_id: str) -> dict[str, Any]:
        path, _ = self._batch_dir(run_id, batch_id)
        record = RunDir(path).read_record(batch_id)
        if record is not None:
            return record.to_dict()
        row = self._view(run_id, path).row(batch_id) or {}
        return {"batchId": batch_id, "batchIndex": row.get("index"), "state": row.get("state"),
                "message": row.get("message")}

    def _series(self, path: Path, view: RunView, batch_id: str, metric: str) -> list[list[Any]]:
        points = view.results.series.get(batch_id, {}).get(metric) or results_api.batch_series(path, batch_id, metric)
        return [list(p) for p in points]

    def series(self, viewer: Any, run_id: str, batch_id: str) -> dict[str, list[list[Any]]]:
        path, _ = self._batch_dir(run_id, batch_id)
        view = self._view(run_id, path)
        found = {metric: self._series(path, view, batch_id, metric) for metric in view.results.metrics}
        return {metric: points for metric, points in found.items() if points}

    def curves(self, viewer: Any, run_id: str, batch_ids: list[str], metric: str) -> dict[str, list[list[Any]]]:
        """The step series of ``metric`` of the given batches (for the run's chart)."""
        path = self._path(run_id)
        view = self._view(run_id, path)
        found = {batch_id: self._series(path, view, batch_id, metric) for batch_id in batch_ids if is_batch_id(batch_id)}
        return {batch_id: points for batch_id, points in found.items() if points}

    def log(self, viewer: Any, run_id: str, batch_id: str, stream: str, offset: int | None) -> LogChunk:
        _, batch = self._batch_dir(run_id, batch_id)
        streams = batch.streams()
        if stream not in streams:
            raise NotFound(f"no stream {stream!r}")
        return read_log(streams[stream], offset, beneath=self._path(run_id))

    def outputs(self, viewer: Any, run_id: str, batch_id: str) -> list[OutputFile] | None:
        _, batch = self._batch_dir(run_id, batch_id)
        root = batch.outputs
        if not root.is_dir() or root.is_symlink():
            return None
        listed: list[OutputFile] = []
        for top, dirs, files in os.walk(root, followlinks=False):
            dirs.sort()
            for name in sorted(files):
                full = os.path.join(top, name)
                info = os.lstat(full)
                if stat.S_ISREG(info.st_mode):
                    listed.append(OutputFile(os.path.relpath(full, root).replace(os.sep, "/"), info.st_size))
                if len(listed) >= MAX_OUTPUTS:
                    return listed
        return listed

    def open_output(self, viewer: Any, run_id: str, batch_id: str, path: str) -> BinaryIO:
        """A regular file under the batch's outputs, opened beneath that directory (a link
        that leads out of it, or a name swapped for one meanwhile, is not followed)."""
        _, batch = self._batch_dir(run_id, batch_id)
        if not path or not all(is_batch_id(p) for p in path.split("/")):  # plain names, no '..'
            raise NotFound("no such output")
        try:
            fd = open_beneath(batch.outputs, path)
        except OSError:
            raise NotFound("no such output") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise NotFound("no such output")
        return os.fdopen(fd, "rb")

    def crate(self, viewer: Any, run_id: str, target: Path) -> None:
        from faice.pipeline.rocrate import write_crate

        write_crate(self._path(run_id), target)


def _subdirs(path: Path) -> list[Path]:
    try:
        with os.scandir(path) as found:
            return sorted(Path(e.path) for e in found if e.is_dir(follow_symlinks=False))
    except OSError:
        return []


def read_log(path: Path, offset: int | None, *, beneath: Path | None = None) -> LogChunk:
    """At most :data:`LOG_TAIL_BYTES` of ``path`` from ``offset`` (None: its tail); nothing
    when it is no regular file beneath the run directory ``beneath`` (a FIFO, a link out)."""
    try:
        handle = open_regular(path, beneath=beneath)
    except OSError:
        return LogChunk("", offset or 0)
    with handle:
        size = os.fstat(handle.fileno()).st_size
        start, skipped = log_window(size, offset)
        handle.seek(start)
        data = handle.read(min(size - start, LOG_TAIL_BYTES))
    return log_chunk(data, start, skipped)
