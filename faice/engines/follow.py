"""``faice status|logs|cancel|list``: follow work on a CC-Agency, or a local/Slurm run directory.

Where the agency is: ``--agency URL``, else ``--red-file`` (its ``execution.settings.access``,
variables filled like ``faice exec``), else ``$FAICE_AGENCY_URL``, else the config file
(``$XDG_CONFIG_HOME/faice/config.yml``: ``agency: {url, username}``). Without a RED file the
username comes from ``$FAICE_AGENCY_USER`` or the config file and the password from the
variables files or the keyring (key ``agency_password``), else a prompt.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from faice.errors import EngineError, UsageError
from faice.secrets import REDACTOR

PASSWORD_KEY = "agency_password"


def run_follow_command(name: str, args) -> int:
    if getattr(args, "outdir", None):
        return _run_directory(name, args)
    client = connect(args)
    return {"status": _status, "logs": _logs, "cancel": _cancel, "list": _list}[name](client, args)


# ------------------------------------------------------------------ where and who
def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    return Path(base) / "faice" / "config.yml"


def _config() -> dict[str, Any]:
    path = config_path()
    if not path.exists():
        return {}
    from faice.red.load import load_mapping, to_plain

    agency = to_plain(load_mapping(str(path), "config file").data).get("agency") or {}
    if not isinstance(agency, dict):
        raise UsageError(f"{path}: agency: expected a mapping with url and username")
    return agency


def connect(args):
    from faice.agency.client import AgencyClient

    if getattr(args, "red_file", None) and not args.agency:
        from faice.engines.agency import agency_access
        from faice.red.experiment import load_experiment
        from faice.red.variables import VariableSources

        experiment = load_experiment(args.red_file, variables=VariableSources.from_args(args))
        url, username, password = agency_access(experiment.data, experiment.source)
        return AgencyClient(url, username, password)
    config = _config()
    url = args.agency or os.environ.get("FAICE_AGENCY_URL") or config.get("url")
    if not url:
        raise UsageError(
            "no agency given: use --agency URL, --red-file REDFILE, $FAICE_AGENCY_URL "
            f"or {config_path()} (agency: {{url: ..., username: ...}})"
        )
    username = os.environ.get("FAICE_AGENCY_USER") or config.get("username")
    if not username:
        raise UsageError(f"no agency username: set $FAICE_AGENCY_USER or agency.username in {config_path()}")
    return AgencyClient(str(url), str(username), _password(args, str(username)))


def _password(args, username: str) -> str:
    from faice.red.load import load_mapping, to_plain

    for source in reversed(getattr(args, "variables", None) or []):
        values = to_plain(load_mapping(source, "variables file").data)
        if values.get(PASSWORD_KEY) is not None:
            return str(values[PASSWORD_KEY])
    service = getattr(args, "keyring_service", None) or "red"
    try:
        import keyring

        stored = keyring.get_password(service, PASSWORD_KEY)
    except Exception:  # no usable keyring backend: fall back to the prompt
        stored = None
    if stored:
        return stored
    if getattr(args, "non_interactive", False) or not sys.stdin.isatty():
        raise UsageError(
            f"no password for agency user {username}: put {PASSWORD_KEY} in a --variables file "
            f"or in keyring service {service!r}"
        )
    import getpass

    return getpass.getpass(f"Agency password for {username}: ")


# ------------------------------------------------------------------ agency commands
def _find(client, ident: str) -> tuple[str, dict[str, Any]]:
    """("batch", doc) or ("experiment", doc) for an id."""
    from faice.agency.client import AgencyHTTPError

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
    from faice.agency.progress import summary

    for batch in batches:
        print(f"{batch.get('batchesListIndex', 0):>4}  {batch['_id']}  {batch['state']:<10}  node {batch.get('node') or '-'}")
    print(summary(batches))


def _status(client, args) -> int:
    if not args.id:
        return _show_experiments(client, 10, args.json)
    kind, doc = _find(client, args.id)
    experiment_id = doc["experimentId"] if kind == "batch" else doc["_id"]
    if args.wait:
        from faice.agency.progress import follow

        follow(client, experiment_id, live=False if args.json else None)
        doc = client.batch(args.id) if kind == "batch" else doc
    if kind == "batch":
        batch = client.batch(args.id) if not args.wait else doc
        if args.json:
            print(REDACTOR.redact(json.dumps(batch, indent=2)))
        else:
            print(f"batch {batch['_id']} of experiment {batch['experimentId']}: {batch['state']} (attempts {batch.get('attempts')})")
            reason = _last_reason(batch)
            if reason:
                print(REDACTOR.redact(reason))
        return 1 if args.wait and batch["state"] != "succeeded" else 0
    batches = client.experiment_batches(experiment_id)
    if args.json:
        print(json.dumps({"experimentId": experiment_id, "batches": batches}, indent=2))
    else:
        print(f"experiment {experiment_id}")
        _print_batches(batches)
    return 1 if args.wait and any(b["state"] != "succeeded" for b in batches) else 0


def _logs(client, args) -> int:
    text = client.log(args.id, "stderr" if args.stderr else "stdout")
    sys.stdout.write(REDACTOR.redact(text))
    sys.stdout.flush()
    return 0


def _cancel(client, args) -> int:
    from faice.agency.client import FINAL

    kind, doc = _find(client, args.id)
    targets = [doc] if kind == "batch" else client.experiment_batches(doc["_id"])
    results = [client.cancel(b["_id"]) if b["state"] not in FINAL else b for b in targets]
    cancelled = [r for r in results if r["state"] == "cancelled"]
    if args.json:
        print(json.dumps([{"batchId": r["_id"], "state": r["state"]} for r in results]))
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
        print(json.dumps(rows, indent=2))
    else:
        _print_experiments(rows)
    return 0


def _print_experiments(rows: list[dict[str, Any]]) -> None:
    import time

    from faice.agency.progress import summary

    if not rows:
        print("no experiments")
    for row in rows:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row["registrationTime"]))
        print(f"{row['_id']}  {when}  {row.get('username')}  {summary(row['batches'])}")


# ------------------------------------------------------------------ run directories
def _run_directory(name: str, args) -> int:
    """status/logs of a local or Slurm run: read run.json and batches/<id>/ (DESIGN §4)."""
    outdir = Path(args.outdir)
    if name in ("status", "cancel") and (outdir / "slurm" / "submissions.json").is_file():
        from faice.engines.slurm import slurm_run_command

        code = slurm_run_command(name, args)  # cancel: scancel; status: run.json refreshed from Slurm
        if code is not None:
            return code
    if name in ("cancel", "list"):
        raise UsageError(f"faice {name} works with an agency; a local or Slurm run directory has nothing to {name}")
    if name == "logs":
        path = outdir / "batches" / args.id / ("stderr.txt" if args.stderr else "stdout.txt")
        if not path.exists():
            raise UsageError(f"{path}: no such file (is {args.id} a batch id of the run in {outdir}?)")
        sys.stdout.write(REDACTOR.redact(path.read_text(errors="replace")))
        return 0
    run_file = outdir / "run.json"
    try:
        run = json.loads(run_file.read_text())
    except FileNotFoundError:
        if not (outdir / "batches").is_dir():
            raise UsageError(f"{run_file}: no such file; --outdir must be a faice run directory") from None
        from faice.records import rebuild_run_summary  # a Slurm run whose tasks wrote only batch records

        run = rebuild_run_summary(outdir)
    except ValueError as exc:
        raise UsageError(f"{run_file}: not valid JSON: {exc}") from None
    if args.id:
        record = outdir / "batches" / args.id / "result.json"
        if not record.exists():
            raise UsageError(f"{record}: no such file (no batch {args.id} in {outdir})")
        data = json.loads(record.read_text())
        print(json.dumps(data, indent=2) if args.json else f"batch {args.id}: {data.get('state')}")
        return 0
    if args.json:
        print(json.dumps(run, indent=2))
        return 0
    print(f"run {run.get('runId', run.get('id', '?'))}: {run.get('state', '?')}")
    for entry in run.get("batches", []):
        bid = entry.get("batchId", entry.get("id"))
        print(f"{entry.get('index', ''):>4}  {bid}  {entry.get('state')}")
    return 0
