"""Every record a test's run wrote must match ``schemas/faice-records.json``.

Used by the autouse fixture in ``tests/conftest.py``: after each test that used ``tmp_path``,
every ``run.json`` and ``batches/<id>/result.json`` below it — written by the local engine,
a Slurm task, the agency runner or ``faice status`` — is validated. A record any engine
writes in a new shape fails the test that produced it.
"""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path


@cache
def _validators():
    from jsonschema import Draft202012Validator

    from faice.red.schemas import load_schema

    schema = load_schema("faice-records")
    defs = schema["$defs"]

    def validator(name: str) -> Draft202012Validator:
        return Draft202012Validator({"$ref": f"#/$defs/{name}", "$defs": defs})

    return validator("batchRecord"), validator("runRecord")


def record_problems(root: Path, *, limit: int = 2000) -> list[str]:
    """'path: message' for every record below ``root`` that does not match the schema."""
    batch, run = _validators()
    problems: list[str] = []
    seen = 0
    for directory, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in ("outputs", "staging", "mounts", ".venv")]
        path = Path(directory)
        names = []
        if "run.json" in files:
            names.append(("run.json", run))
        if "result.json" in files and path.parent.name == "batches":
            names.append(("result.json", batch))
        for name, validator in names:
            seen += 1
            if seen > limit:
                return problems
            try:
                data = json.loads((path / name).read_text())
            except (OSError, ValueError):
                continue  # not a faice record (or being replaced): other tests judge content
            if not isinstance(data, dict) or ("batches" if name == "run.json" else "batchId") not in data:
                continue  # another program's file of that name
            for error in validator.iter_errors(data):
                where = "/".join(str(p) for p in error.absolute_path)
                problems.append(f"{path / name}: {where}: {error.message}")
    return problems
