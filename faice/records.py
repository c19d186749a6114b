"""The run directory and its records (DESIGN §4).

    <outdir>/run.json                        run summary (rebuilt from the batch records)
    <outdir>/batches/<batch-id>/result.json  the batch record
    <outdir>/batches/<batch-id>/stdout.txt, stderr.txt
    <outdir>/batches/<batch-id>/outputs/     the container's /cc/outputs (working directory)

Every write is atomic (temp file + rename) and passes through the redactor, so a crash never
leaves half a record and a secret never reaches the disk.
"""

from __future__ import annotations

import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from faice.errors import UsageError
from faice.secrets import REDACTOR

RUN_FILE = "run.json"
RESULT_FILE = "result.json"
FINAL_STATES = ("succeeded", "failed", "cancelled")


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (redacted) to ``path`` so that readers see the old or the new file only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(REDACTOR.redact(text))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(REDACTOR.redact_data(data), indent=2, sort_keys=False) + "\n")


def read_json(path: Path) -> Any | None:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def default_outdir(run_id: str) -> Path:
    return Path("faice-runs") / f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{run_id}"


def prepare_outdir(outdir: Path, *, resume: bool) -> dict[str, Any] | None:
    """Create ``outdir``; refuse a non-empty one unless resuming. Returns the old run.json."""
    if outdir.exists() and not outdir.is_dir():
        raise UsageError(f"--outdir {outdir}: exists and is not a directory")
    if resume:
        is_run = (outdir / RUN_FILE).exists() or (outdir / "batches").exists()
        if not is_run and outdir.exists() and any(outdir.iterdir()):
            raise UsageError(f"--outdir {outdir}: --resume needs a faice run directory (no {RUN_FILE})")
        outdir.mkdir(parents=True, exist_ok=True)
        return read_json(outdir / RUN_FILE)
    if outdir.exists() and any(outdir.iterdir()):
        raise UsageError(
            f"--outdir {outdir}: directory is not empty; faice never merges two runs",
            hint="choose another --outdir, or add --resume to continue the run recorded there",
        )
    outdir.mkdir(parents=True, exist_ok=True)
    return None


def batch_dir(outdir: Path, batch_id: str) -> Path:
    return outdir / "batches" / batch_id


def read_result(outdir: Path, batch_id: str) -> dict[str, Any] | None:
    data = read_json(batch_dir(outdir, batch_id) / RESULT_FILE)
    return data if isinstance(data, dict) else None


def write_result(outdir: Path, batch_id: str, record: dict[str, Any]) -> None:
    atomic_write_json(batch_dir(outdir, batch_id) / RESULT_FILE, record)


def batch_entry(record: dict[str, Any]) -> dict[str, Any]:
    """The run.json line of one batch record."""
    return {
        "id": record.get("batchId"),
        "index": record.get("batchIndex"),
        "state": record.get("state"),
        "parameters": record.get("parameters") or {},
        "failureClass": record.get("failureClass"),
        "message": record.get("message"),
        "gpus": record.get("gpus") or [],
        "seconds": (record.get("timings") or {}).get("total"),
    }


def summarise(run: dict[str, Any], entries: list[dict[str, Any]]) -> dict[str, Any]:
    """run.json from the run's header fields and one entry per batch."""
    entries = sorted(entries, key=lambda e: (e.get("index") is None, e.get("index") or 0))
    counts: dict[str, int] = {}
    for entry in entries:
        counts[entry.get("state") or "pending"] = counts.get(entry.get("state") or "pending", 0) + 1
    states = {e.get("state") for e in entries}
    if not entries or states <= {"succeeded"}:
        state = "succeeded" if entries else run.get("state", "succeeded")
    elif states - set(FINAL_STATES):
        state = run.get("state") if run.get("state") in ("running", "cancelled") else "incomplete"
    elif "cancelled" in states:
        state = "cancelled"
    else:
        state = "failed"
    return {**run, "state": state, "counts": counts, "batches": entries}


def write_run(outdir: Path, summary: dict[str, Any]) -> None:
    atomic_write_json(outdir / RUN_FILE, summary)


def rebuild_run_summary(outdir: Path) -> dict[str, Any]:
    """run.json rebuilt from every ``batches/*/result.json`` (Slurm tasks write only those)."""
    outdir = Path(outdir)
    header = read_json(outdir / RUN_FILE) or {}
    header = {k: v for k, v in header.items() if k not in ("batches", "counts", "state")}
    known = {e.get("id"): e for e in (read_json(outdir / RUN_FILE) or {}).get("batches", []) if isinstance(e, dict)}
    entries = []
    root = outdir / "batches"
    for path in sorted(root.glob(f"*/{RESULT_FILE}")) if root.is_dir() else []:
        record = read_json(path)
        if isinstance(record, dict):
            entry = batch_entry(record)
            known.pop(entry["id"], None)
            entries.append(entry)
    entries.extend({**e, "state": e.get("state") if e.get("state") in FINAL_STATES else "pending"}
                   for e in known.values())
    summary = summarise(header, entries)
    summary["updated"] = now_iso()
    write_run(outdir, summary)
    return summary
