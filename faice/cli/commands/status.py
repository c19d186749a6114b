"""``faice status|logs|cancel|list``: follow experiments on a CC-Agency or a Slurm/local run."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from faice.cli.options import add_debug, add_variables, variable_sources
from faice.cli.parser import lazy, new_command
from faice.errors import EngineError, UsageError
from faice.files import dumps_json, open_regular
from faice.secrets import REDACTOR
from faice.untrusted import for_terminal

if TYPE_CHECKING:
    from faice.pipeline.rundir import RunDir


def _add_agency_options(parser) -> None:
    group = parser.add_argument_group("where")
    group.add_argument("--agency", metavar="URL", help="agency URL (default: from --red-file, then the config file)")
    group.add_argument("--red-file", metavar="REDFILE", help="take the agency URL and credentials from this RED file's execution section")
    group.add_argument("--outdir", metavar="DIR", help="a local or Slurm run directory instead of an agency")
    group.add_argument("--json", action="store_true", help="print JSON (docs/cli.md shows each command's)")
    add_variables(parser)
    add_debug(parser)


def add_parser(subparsers) -> None:
    def command(name: str, help: str, examples: str):
        return new_command(subparsers, name, help=help, examples=examples,
                           run=lazy("faice.cli.commands.status:run", name))

    status = command("status", "show the state of an experiment or batch (agency, Slurm or local run)",
                     "  faice status 65f0c1...\n  faice status --outdir runs/lr\n"
                     "  faice status --agency https://agency.example.org --json")
    status.add_argument("id", metavar="ID", nargs="?",
                        help="experiment or batch id (default: the local runs under ./faice-runs, else your recent experiments)")
    status.add_argument("--wait", action="store_true", help="follow until every batch is final")
    _add_agency_options(status)

    logs = command("logs", "print a batch's stdout (or --stderr)",
                   "  faice logs 65f0c1...\n  faice logs --stderr 65f0c1...\n  faice logs -f b-1a2b3c4d5e6f --outdir runs/lr")
    logs.add_argument("id", metavar="BATCH_ID")
    logs.add_argument("--stderr", action="store_true", help="print stderr instead of stdout")
    logs.add_argument("-f", "--follow", action="store_true",
                      help="keep printing new lines until the batch ends (a local run directory, --outdir)")
    _add_agency_options(logs)

    cancel = command("cancel", "cancel a batch or every batch of an experiment or run",
                     "  faice cancel 65f0c1...\n  faice cancel 3a70810eb467 --outdir runs/lr   # a local run, as a whole")
    cancel.add_argument("id", metavar="ID", help="experiment or batch id; with --outdir the run id (Slurm: also a batch id)")
    _add_agency_options(cancel)

    listing = command("list", "list experiments on an agency, the batches of a run directory, or the runs under ./faice-runs",
                      "  faice list --agency http://127.0.0.1:8080 --limit 5\n  faice list --outdir runs/lr")
    listing.add_argument("--limit", type=int, default=20, help="at most this many (default: 20)")
    _add_agency_options(listing)


def run(name: str, args: Any) -> int:
    if getattr(args, "follow", False) and args.json:
        raise UsageError("faice logs -f prints lines as they come: leave out --json")
    if args.outdir:
        return _run_directory(name, args)
    if getattr(args, "follow", False):
        raise UsageError("faice logs -f follows a local or Slurm run directory: add --outdir DIR")
    if name in ("status", "list") and not getattr(args, "id", None) and not args.agency and not args.red_file \
            and LOCAL_ROOT.is_dir():
        return _list_local_runs(LOCAL_ROOT, args.json)
    from faice.engines.agency.connect import connect

    client = connect(args.agency, args.red_file, variable_sources(args))
    return {"status": _status, "logs": _logs, "cancel": _cancel, "list": _list}[name](client, args)


# ------------------------------------------------------------------ agency commands
def _find(client, ident: str) -> tuple[str, dict[str, Any]]:
    """("batch", doc) or ("experiment", doc) for an id."""
    from faice.engines.agency.client import AgencyHTTPError

    try:
        return "batch", client.batch(ident)
    except AgencyHTTPError as exc:
        if exc.status != 404:
            raise
    try:
        return "experiment", client.experiment(ident)
    except AgencyHTTPError as exc:
        if exc.status == 404:
            raise EngineError(f"no batch or experiment {ident} on {client.url} (or it belongs to another user)") from None
        raise


def _last_reason(batch: dict[str, Any]) -> str | None:
    return next((h.get("debugInfo") for h in reversed(batch.get("history", [])) if h.get("debugInfo")), None)


def _print_batches(batches: list[dict[str, Any]]) -> None:
    from faice.engines.agency.follow import summary

    for batch in batches:
        print(f"{batch.get('batchesListIndex', 0):>4}  {batch['_id']}  {batch['state']:<10}  node {batch.get('node') or '-'}")
    print(summary(batches))


# States of an agency batch that end it as planned: `--wait` exits 0 when every batch has one
# (stopped: faice's server stopped it early, CC-Agency's "cancelled" of such a batch).
ENDED_AS_PLANNED = ("succeeded", "stopped")


def _status(client, args) -> int:
    from faice.engines.agency.follow import ShownStates

    if not args.id:
        return _show_experiments(client, 10, args.json)
    kind, doc = _find(client, args.id)
    experiment_id = doc["experimentId"] if kind == "batch" else doc["_id"]
    if args.wait:
        from faice.engines.agency.follow import follow

        follow(client, experiment_id, live=False if args.json else None)
    batches = [client.batch(args.id)] if kind == "batch" else client.experiment_batches(experiment_id)
    # The states faice's records give them (a request per cancelled batch): for the text and
    # for --wait's exit code; --json alone prints CC-Agency's documents as they are.
    shown = ShownStates(client)(batches) if args.wait or not args.json else batches
    if args.json:  # CC-Agency's own documents
        print(REDACTOR.redact(dumps_json(batches[0] if kind == "batch" else
                                         {"experimentId": experiment_id, "batches": batches}, indent=2)))
    elif kind == "batch":
        batch = shown[0]
        print(f"batch {batch['_id']} of experiment {batch['experimentId']}: {batch['state']} (attempts {batch.get('attempts')})")
        reason = _last_reason(batch)
        if reason:
            print(REDACTOR.redact(reason))
    else:
        print(f"experiment {experiment_id}")
        _print_batches(shown)
    return 1 if args.wait and any(b["state"] not in ENDED_AS_PLANNED for b in shown) else 0


def _logs(client, args) -> int:
    stream = "stderr" if args.stderr else "stdout"
    _print_log(args.id, stream, client.log(args.id, stream), args.json)
    return 0


def _print_log(batch_id: str, stream: str, text: str, as_json: bool) -> None:
    """A batch's stdout or stderr, masked; with --json as {"batchId", "stream", "text"}."""
    text = REDACTOR.redact(text)
    sys.stdout.write(json.dumps({"batchId": batch_id, "stream": stream, "text": text}) + "\n" if as_json else text)
    sys.stdout.flush()


def _cancel(client, args) -> int:
    from faice.engines.agency.client import FINAL

    kind, doc = _find(client, args.id)
    targets = [doc] if kind == "batch" else client.experiment_batches(doc["_id"])
    results = [client.cancel(b["_id"]) if b["state"] not in FINAL else b for b in targets]
    cancelled = [r for r in results if r["state"] == "cancelled"]
    if args.json:
        print(dumps_json([{"batchId": r["_id"], "state": r["state"]} for r in results]))
    else:
        for result in results:
            print(f"{result['_id']}: {result['state']}")
    finished = [r for r in results if r["state"] != "cancelled"]
    if finished and not cancelled:
        print(f"nothing to cancel: {len(finished)} batch(es) already final", file=sys.stderr)
    return 0


def _list(client, args) -> int:
    return _show_experiments(client, args.limit, args.json)


def _show_experiments(client, limit: int, as_json: bool) -> int:
    experiments = client.experiments(limit=limit)
    rows = [{**e, "batches": client.experiment_batches(e["_id"])} for e in experiments]
    if as_json:
        print(dumps_json(rows, indent=2))
    else:
        _print_experiments(rows)
    return 0


def _print_experiments(rows: list[dict[str, Any]]) -> None:
    import time

    from faice.engines.agency.follow import summary

    if not rows:
        print("no experiments")
    for row in rows:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row["registrationTime"]))
        print(f"{row['_id']}  {when}  {row.get('username')}  {summary(row['batches'])}")


# ------------------------------------------------------------------ run directories
def _run_directory(name: str, args) -> int:
    """status/logs of a local or Slurm run: read run.json and batches/<id>/."""
    from faice.engines.slurm.rundir import is_slurm_run
    from faice.pipeline.rundir import RunDir, is_batch_id

    outdir = Path(args.outdir)
    run_dir = RunDir(outdir)
    slurm_run = is_slurm_run(outdir)
    if slurm_run and name in ("status", "cancel", "list"):
        from faice.engines.slurm import engine as slurm

        if name == "cancel":
            return slurm.cancel(outdir, args.id)
        slurm.refresh_status(outdir, wait=getattr(args, "wait", False))  # run.json refreshed, printed below
    elif name == "cancel":
        return _cancel_local(outdir, args.id)
    if name == "logs":
        if not is_batch_id(args.id or ""):
            raise UsageError(f"faice logs --outdir: {args.id!r} is no batch id (faice status --outdir {outdir} lists them)")
        path = run_dir.batch(args.id).stream("stderr" if args.stderr else "stdout")
        if args.follow:
            return _follow(path, run_dir, args.id)
        if not path.exists():
            raise UsageError(f"{path}: no such file (is {args.id} a batch id of the run in {outdir}?)")
        from faice.files import read_tail

        try:
            text, skipped = read_tail(path, beneath=outdir)
        except OSError as exc:
            raise UsageError(f"{path}: {exc.strerror or exc} (expected a regular file in the run directory)") from None
        if skipped:
            print(f"faice: the first {skipped} bytes of {path} left out (it is larger than faice reads)", file=sys.stderr)
        _print_log(args.id, "stderr" if args.stderr else "stdout", text, args.json)
        return 0
    run = run_dir.read_or_rebuild()
    if getattr(args, "wait", False) and not slurm_run:
        from faice.engines.local_control import wait_run

        run = wait_run(outdir)
    if name == "list":
        return _list_batches(run, args.json)
    if args.id:
        data = run_dir.read_record_data(args.id) if is_batch_id(args.id) else None
        if data is None:
            record = run_dir.batch(args.id).record
            if is_batch_id(args.id) and os.path.lexists(record):
                raise UsageError(f"{record}: not a batch record (expected a JSON object in a regular file of "
                                 "this run directory)")
            raise UsageError(f"{record}: no such file (no batch {args.id} in {outdir})")
        print(dumps_json(data, indent=2) if args.json else for_terminal(f"batch {args.id}: {data.get('state')}"))
        return 1 if data.get("state") in ("failed", "cancelled") else 0
    failed = 1 if run.get("state") in ("failed", "cancelled", "incomplete", "interrupted") else 0
    if args.json:
        print(dumps_json(run, indent=2))
        return failed
    from faice.engines.display import failure_report

    print(for_terminal(REDACTOR.redact(f"run {run.get('runId', run.get('id', '?'))}: {run.get('state', '?')}")))
    _print_run_batches(run)
    for line in failure_report(run, outdir):
        print(REDACTOR.redact(line))
    return failed


def _print_run_batches(run: dict[str, Any]) -> None:
    for entry in run.get("batches", []):
        bid = entry.get("batchId", entry.get("id"))
        parameters = entry.get("parameters") or {}
        shown = "  " + ", ".join(f"{k}={v}" for k, v in parameters.items()) if parameters else ""
        index = entry.get("index")
        print(for_terminal(REDACTOR.redact(f"{'' if index is None else index!s:>4}  {bid}  {entry.get('state') or '?'!s:<10}{shown}")))


def _list_batches(run: dict[str, Any], as_json: bool) -> int:
    """``faice list --outdir``: the batches of a run directory, one line each."""
    if as_json:
        print(dumps_json(run.get("batches", []), indent=2))
    else:
        _print_run_batches(run)
    return 0


def _cancel_local(outdir: Path, target: str | None) -> int:
    """``faice cancel RUN_ID --outdir``: stop a local run from another terminal."""
    from faice.engines.local_control import cancel_run

    final = cancel_run(outdir, target)
    if final is None:
        print("faice: nothing to cancel: the run is not running", file=sys.stderr)
        return 0
    cancelled = [e.get("id") for e in final.get("batches", []) if e.get("state") == "cancelled"]
    print(f"faice: cancelled the run in {outdir} ({final.get('state')}): "
          f"{len(cancelled)} batch{'es' if len(cancelled) != 1 else ''} cancelled", file=sys.stderr)
    return 0


LOCAL_ROOT = Path("faice-runs")  # where faice exec puts runs without --outdir
FOLLOW_POLL_S = 0.2


def _list_local_runs(root: Path, as_json: bool) -> int:
    """``faice status`` without arguments: the runs under ./faice-runs, newest first."""
    from faice.pipeline.rundir import RunDir

    runs: list[dict[str, Any]] = []
    for path in sorted(root.iterdir(), key=lambda p: p.lstat().st_mtime, reverse=True):  # a dangling link too
        record = RunDir(path).read_run() if path.is_dir() else None
        if record is not None:
            counts = record.get("counts")  # one hand-edited run.json must not hide the other runs
            runs.append({"outdir": str(path), "runId": record.get("runId"), "state": record.get("state"),
                         "counts": counts if isinstance(counts, dict) else {}, "source": record.get("source"),
                         "started": record.get("started")})
    if as_json:
        print(dumps_json(runs, indent=2))
        return 0
    if not runs:
        print(f"no runs under {root}/")
    for item in runs:
        counts = ", ".join(f"{v} {k}" for k, v in item["counts"].items())
        print(for_terminal(REDACTOR.redact(f"{item['outdir']}  {item['state']!s:<10}  {counts}  ({item['source']})")))
    if runs:
        print("details: faice status --outdir DIR; agency experiments: faice status --agency URL")
    return 0


def _follow(path: Path, run_dir: RunDir, batch_id: str) -> int:
    """``faice logs -f``: print the file as it grows (whole lines, redacted) until the batch's
    record is final and nothing more comes."""
    import time

    outdir = run_dir.root
    if not run_dir.batch(batch_id).path.is_dir() and not run_dir.run_file.is_file():
        raise UsageError(f"{outdir}: not a faice run directory")
    listed = run_dir.recorded_entries()
    if listed and batch_id not in listed:
        raise UsageError(f"no batch {batch_id} in the run in {outdir} (faice status --outdir {outdir} lists them)")
    deadline_missing = time.monotonic() + 60
    log = _GrowingFile(path, outdir)
    carry = b""

    def show(data: bytes, *, whole: bool = False) -> None:
        """Print the complete lines of ``carry + data`` (all of it with ``whole``)."""
        nonlocal carry
        data = carry + data
        cut = len(data) if whole else data.rfind(b"\n") + 1
        carry = data[cut:]
        if cut:
            sys.stdout.write(REDACTOR.redact(data[:cut].decode("utf-8", "replace")))
            sys.stdout.flush()

    try:
        while True:
            record = run_dir.read_record(batch_id)
            final = record is not None and record.is_final
            rest, fresh = log.read()
            show(rest)
            if fresh is not None:  # a new attempt's file: the old one's unfinished line ends here
                if carry:
                    show(b"\n")
                show(fresh)
            if not rest and fresh is None:
                if final:
                    show(b"", whole=True)
                    return 0
                if not log.exists and time.monotonic() > deadline_missing:
                    raise UsageError(f"{path}: no such file (is {batch_id} a batch id of the run in {outdir}?)")
            time.sleep(FOLLOW_POLL_S)
    finally:
        log.close()


class _GrowingFile:
    """A log file read as it grows, also across a new attempt: a retry or ``--resume``
    recreates it (a new file; the one held open cannot be reused meanwhile, so its identity
    tells) or truncates it in place, and the new file is read from its first byte. A new
    file that starts with exactly what was read (the whole log fetched again after a broken
    stream) continues where the old one ended."""

    def __init__(self, path: Path, beneath: Path):
        self.path = path
        self.beneath = beneath  # the run directory: the file is never read through a link out of it
        self._handle: BinaryIO | None = None
        self._seen = hashlib.sha256()  # of every byte read from the current file
        self._size = 0
        self.exists = False
        self.opened = False  # a file was read before: another one may be a new attempt

    def _take(self, data: bytes, *, new: bool = False) -> bytes:
        if new:
            self._seen, self._size = hashlib.sha256(), 0
        self._seen.update(data)
        self._size += len(data)
        return data

    def read(self) -> tuple[bytes, bytes | None]:
        """(new bytes of the file read so far, the bytes of a new attempt's file or None)."""
        try:
            current: os.stat_result | None = os.stat(self.path)
        except FileNotFoundError:
            current = None
        rest, fresh = b"", None
        if self._handle is not None:
            rest = self._take(self._handle.read())  # the rest of the file held open, replaced or not
            held = os.fstat(self._handle.fileno())
            if current is None or (current.st_ino, current.st_dev) != (held.st_ino, held.st_dev):
                self.close()  # replaced or removed
            elif current.st_size < self._handle.tell():  # truncated in place: a new attempt
                self._handle.seek(0)
                fresh = self._take(self._handle.read(), new=True)
        if self._handle is None and current is not None:
            try:
                self._handle = open_regular(self.path, beneath=self.beneath)
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise UsageError(f"{self.path}: {exc.strerror or exc} (expected a regular file in the run "
                                 "directory)") from None
            else:
                data = self._handle.read()
                if self.opened and hashlib.sha256(data[:self._size]).digest() == self._seen.digest():
                    rest += self._take(data[self._size:])  # the same log, longer
                elif self.opened:
                    fresh = self._take(data, new=True)
                else:
                    rest += self._take(data)
                self.opened = True
        self.exists = self._handle is not None
        return rest, fresh

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
