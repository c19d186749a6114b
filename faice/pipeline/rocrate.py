"""A run directory as an RO-Crate (Process Run Crate 0.5): a result that travels with its provenance.

The crate holds the RED file as run (secrets masked), the CWL tool, the container image (with
its digest where faice recorded one) and one ``CreateAction`` per batch: its parameters as
``object``, its output files (copied, with SHA-256) and final metrics as ``result``, its start
and end, state, failure reason, timings and GPUs (``resourceUsage``). Everything read from the
records passes the redactor once more, so no secret reaches the crate's metadata.
See https://www.researchobject.org/workflow-run-crate/profiles/process_run_crate/.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from pathlib import Path
from typing import Any
from urllib.parse import quote

from faice import __version__
from faice.descriptors import open_beneath
from faice.errors import UsageError
from faice.files import atomic_write_json
from faice.pipeline.results import load_results
from faice.pipeline.rundir import BATCHES, OUTPUTS, RED_FILE, RunDir, is_batch_id
from faice.secrets import REDACTOR, batch_redactor

METADATA = "ro-crate-metadata.json"
# resourceUsage (timings, GPUs) is a Workflow Run Crate term newer than its 0.5 context
CONTEXT = ["https://w3id.org/ro/crate/1.1/context", "https://w3id.org/ro/terms/workflow-run/context",
           {"resourceUsage": "https://w3id.org/ro/terms/workflow-run#resourceUsage"}]
PROFILE = "https://w3id.org/ro/wfrun/process/0.5"
CWL = "https://w3id.org/workflowhub/workflow-ro-crate#cwl"
DOCKER_IMAGE = "https://w3id.org/ro/terms/workflow-run#DockerImage"
MAX_OUTPUT_FILES = 10_000  # per batch
STATUS = {"succeeded": "http://schema.org/CompletedActionStatus", "failed": "http://schema.org/FailedActionStatus",
          "cancelled": "http://schema.org/FailedActionStatus", "stopped": "http://schema.org/CompletedActionStatus",
          "running": "http://schema.org/ActiveActionStatus", "pending": "http://schema.org/PotentialActionStatus"}


def write_crate(outdir: Path, target: Path) -> Path:
    """Write the crate of the run in ``outdir`` into the new directory ``target`` (refused when
    it exists and is not empty); written next to it first, so a failure leaves no half crate."""
    outdir, target = Path(outdir), Path(target)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise UsageError(f"--ro-crate {target}: exists and is not an empty directory")
    header = RunDir(outdir).read_run()
    if header is None:
        raise UsageError(f"{outdir}: not a faice run directory (no run record)", hint="give the --outdir of a faice exec run")
    work = target.with_name(f".{target.name}.partial-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        _build(outdir, header, work)
        if target.exists():
            target.rmdir()
        work.rename(target)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return target


def _build(outdir: Path, header: dict[str, Any], work: Path) -> None:
    red = RunDir(outdir).read_red() if header.get("redFile") else None
    masking = batch_redactor(red or {}, parent=REDACTOR)
    graph: list[dict[str, Any]] = []
    parts: list[dict[str, str]] = []
    if red is not None:
        atomic_write_json(work / RED_FILE, masking.redact_data(red), redact=masking.redact)
        graph.append({"@id": RED_FILE, "@type": "File", "name": "the RED file as run (secrets masked)",
                      "encodingFormat": "application/json"})
        parts.append({"@id": RED_FILE})
    tool: dict[str, Any] = {"@id": "#tool", "@type": "SoftwareApplication", "name": "the experiment's command"}
    if red is not None and isinstance(red.get("cli"), dict):
        atomic_write_json(work / "tool.cwl", masking.redact_data(red["cli"]), redact=masking.redact)
        cli = red["cli"]
        tool = {"@id": "tool.cwl", "@type": ["File", "SoftwareSourceCode", "SoftwareApplication"],
                "name": str(cli.get("label") or cli.get("id") or "CWL CommandLineTool"),
                "description": str(cli.get("doc") or "the experiment's CWL CommandLineTool"),
                "programmingLanguage": {"@id": CWL}, "encodingFormat": "application/json"}
        graph.append({"@id": CWL, "@type": "ComputerLanguage", "name": "Common Workflow Language",
                      "alternateName": "CWL", "identifier": {"@id": "https://w3id.org/cwl/"},
                      "url": {"@id": "https://www.commonwl.org/"}})
        parts.append({"@id": "tool.cwl"})
    graph.append(tool)
    faice: dict[str, Any] = {"@id": "#faice", "@type": "SoftwareApplication", "name": "faice", "version": str(header.get("faiceVersion") or __version__),
             "url": {"@id": "https://pypi.org/project/faice/"}}
    graph.append(faice)
    image = _image(header, red)
    if image is not None:
        graph.append(image)
    results = load_results(outdir)
    actions = []
    for row in results.rows:
        action, entities, files = _batch(outdir, str(row["batch"]), row, results.parameters, tool["@id"], image, work)
        graph.append(action)
        graph.extend(entities)
        parts.extend({"@id": f} for f in files)
        actions.append({"@id": action["@id"]})
    root: dict[str, Any] = {
        "@id": "./", "@type": "Dataset", "name": f"faice run {outdir.resolve().name}",
        "description": f"A faice run of {len(actions)} batches" + (
            f", ranked by {results.objective['name']} ({results.objective.get('goal', 'max')})" if results.objective else ""),
        "datePublished": str(header.get("finished") or header.get("updated") or header.get("started") or ""),
        "conformsTo": {"@id": PROFILE}, "license": {"@id": "https://spdx.org/licenses/CC-BY-4.0"},
        "hasPart": parts, "mentions": actions,
    }
    if results.best is not None:
        root["about"] = {"@id": f"#batch-{quote(str(results.best['batch']), safe='')}"}
    graph.append({"@id": "https://spdx.org/licenses/CC-BY-4.0", "@type": "CreativeWork", "name": "CC BY 4.0"})
    graph.append({"@id": PROFILE, "@type": "CreativeWork", "name": "Process Run Crate", "version": "0.5"})
    metadata = {"@id": METADATA, "@type": "CreativeWork", "conformsTo": {"@id": "https://w3id.org/ro/crate/1.1"},
                "about": {"@id": "./"}}
    document = {"@context": CONTEXT, "@graph": [metadata, root, *graph]}
    atomic_write_json(work / METADATA, masking.redact_data(document), redact=masking.redact)


def _image(header: dict[str, Any], red: dict[str, Any] | None) -> dict[str, Any] | None:
    recorded: dict[str, Any] = header["image"] if isinstance(header.get("image"), dict) else {}
    ref = recorded.get("ref")
    if not ref and red is not None:
        settings = ((red.get("container") or {}).get("settings") or {}) if isinstance(red.get("container"), dict) else {}
        ref = (settings.get("image") or {}).get("url") if isinstance(settings.get("image"), dict) else None
    if not isinstance(ref, str) or not ref:
        return None
    name, _, digest = ref.partition("@")
    repository, tag = name, None
    if ":" in name.rsplit("/", 1)[-1]:
        repository, tag = name.rsplit(":", 1)
    digest = digest or str(recorded.get("digest") or "").partition("@")[2] or str(recorded.get("digest") or "")
    image: dict[str, Any] = {"@id": "#image", "@type": "ContainerImage", "additionalType": {"@id": DOCKER_IMAGE},
                             "name": repository, "identifier": ref}
    if "/" in repository and "." in repository.split("/", 1)[0]:
        image["registry"] = repository.split("/", 1)[0]
    if tag:
        image["tag"] = tag
    if digest.startswith("sha256:"):
        image["sha256"] = digest.removeprefix("sha256:")
    if recorded.get("id"):
        image["alternateName"] = str(recorded["id"])
    return image


def _batch(outdir: Path, batch_id: str, row: dict[str, Any], parameters: list[str], tool: str,
           image: dict[str, Any] | None, work: Path) -> tuple[dict[str, Any], list[dict[str, Any]], list[str]]:
    """One batch's CreateAction, its PropertyValues and the crate paths of its output files."""
    base = f"#batch-{quote(batch_id, safe='')}"
    record = RunDir(outdir).read_record(batch_id) if is_batch_id(batch_id) else None
    entities: list[dict[str, Any]] = []
    inputs, outputs, usage = [], [], []

    def value(kind: str, name: str, data: Any, **extra: Any) -> dict[str, str]:
        entity = {"@id": f"{base}-{kind}-{quote(name, safe='')}", "@type": "PropertyValue", "name": name,
                  "value": data if isinstance(data, (int, float, str, bool)) else json.dumps(data), **extra}
        entities.append(entity)
        return {"@id": entity["@id"]}

    source = record.parameters if record is not None else {p: row.get(f"param.{p}") for p in parameters}
    for name, data in source.items():
        if data is not None:
            inputs.append(value("param", str(name), data))
    final = ((record.metrics or {}).get("final") if record is not None else None) or {}
    for name, data in final.items():
        outputs.append(value("metric", str(name), data))
    if record is not None:
        for name, seconds in (record.timings or {}).items():
            if isinstance(seconds, (int, float)):
                usage.append(value("seconds", str(name), seconds, unitCode="https://qudt.org/vocab/unit/SEC"))
        for gpu in record.gpus:
            usage.append(value("gpu", f"GPU {gpu.get('index')}", gpu.get("uuid"),
                               description=str(gpu.get("name") or "GPU")))
    files = _outputs(RunDir(outdir).batch(batch_id).outputs, Path(BATCHES) / batch_id / OUTPUTS, work) \
        if is_batch_id(batch_id) else []
    for path, size, digest in files:
        entities.append({"@id": quote(path), "@type": "File", "name": Path(path).name, "contentSize": str(size),
                         "sha256": digest})
        outputs.append({"@id": quote(path)})
    action: dict[str, Any] = {
        "@id": base, "@type": "CreateAction", "name": f"batch {batch_id}", "instrument": {"@id": tool},
        "agent": {"@id": "#faice"}, "actionStatus": {"@id": STATUS.get(str(row["state"]), STATUS["pending"])},
        "object": inputs, "result": outputs,
    }
    if image is not None:
        action["containerImage"] = {"@id": image["@id"]}
    if usage:
        action["resourceUsage"] = usage
    if record is not None and record.started:
        action["startTime"] = record.started
    if record is not None and record.finished:
        action["endTime"] = record.finished
    if row.get("message") and row["state"] != "succeeded":
        action["error"] = f"{row.get('failure') or row['state']}: {row['message']}"
    if row.get("best"):
        action["description"] = "the best batch of the run"
    return action, entities, [quote(p) for p, _, _ in files]


def _outputs(source: Path, inside: Path, work: Path) -> list[tuple[str, int, str]]:
    """Copy the regular files under ``source`` (no link followed) to ``work/inside``."""
    if not source.is_dir() or source.is_symlink():
        return []
    found: list[tuple[str, int, str]] = []
    for top, dirs, names in os.walk(source, followlinks=False):
        dirs.sort()
        for name in sorted(names):
            path = Path(top) / name
            if not stat.S_ISREG(os.lstat(path).st_mode) or len(found) >= MAX_OUTPUT_FILES:
                continue
            relative = inside / path.relative_to(source)
            destination = work / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            digest = hashlib.sha256()
            with os.fdopen(open_beneath(source, str(path.relative_to(source))), "rb") as reader, \
                    open(destination, "wb") as writer:
                for chunk in iter(lambda: reader.read(1 << 20), b""):
                    digest.update(chunk)
                    writer.write(chunk)
            found.append((relative.as_posix(), destination.stat().st_size, digest.hexdigest()))
    return found

