"""The embedded CWL tool (RED ``cli``), checked and loaded by cwltool, the reference implementation.

RED's schema already restricts ``cli`` to a small CommandLineTool subset; cwltool adds what only
a CWL implementation knows (type names, bindings, expressions). Results are cached per process
because every batch of a file shares one ``cli``, and a tool cwltool accepted is remembered on
disk (:mod:`faice.cwl.checked`), so running the same tool again does not pay the cwltool load.
"""

from __future__ import annotations

import json
import logging
import os
import re
from typing import Any

from faice.errors import KeyPath

CWL_VERSIONS = ("v1.0", "v1.1", "v1.2")
# Items of one list in ``cli`` (baseCommand, arguments, enum symbols, defaults): cwltool copies
# the tool as ruamel containers, whose deep copy costs time quadratic in a list's length
# (0.2 s at 400 items, minutes at 5,000), so longer lists are refused before cwltool sees them.
MAX_CLI_LIST = 500
_cache: dict[str, tuple[Any, list[tuple[KeyPath, str]]]] = {}


def cwl_document(cli: dict[str, Any], source: str | None = None) -> dict[str, Any]:
    """A CWL CommandLineTool document for cwltool built from a RED ``cli`` section: plain
    data (cwltool copies the document several times, and copying ruamel's commented
    containers costs time quadratic in a list's length: minutes for 5,000 tokens)."""
    document = json.loads(json.dumps(cli, default=str))
    version = document.get("cwlVersion")
    document["cwlVersion"] = version if version in CWL_VERSIONS else "v1.0"  # RED 8 allowed numbers
    base = document.get("baseCommand")
    if base is None:
        document.pop("baseCommand", None)
    else:  # upstream strips every token; the command line built from this tool must agree
        document["baseCommand"] = [str(t).strip() for t in ([base] if isinstance(base, str) else base)]
    if source and "://" not in source and source not in ("-", "<stdin>"):
        document["id"] = f"file://{os.path.abspath(source)}#cli"
    else:
        document["id"] = "_:cli"
    return document


def _quiet_cwltool() -> None:
    """cwltool's and cwl_utils' loggers print tracebacks of expression errors faice reports
    itself; cwl_utils sets its level when first imported, so import it before."""
    import cwl_utils.loghandler  # noqa: F401

    for name in ("cwltool", "cwl_utils", "salad", "schema_salad", "rdflib"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def load_cli(cli: dict[str, Any], source: str | None = None) -> tuple[Any, list[tuple[KeyPath, str]]]:
    """(cwltool tool object or None, problems as (path, message)) for a RED ``cli``."""
    key = json.dumps(cli, sort_keys=True, default=str)
    if key in _cache:
        return _cache[key]
    _quiet_cwltool()
    from cwltool.context import LoadingContext
    from cwltool.load_tool import load_tool
    from cwltool.workflow import default_make_tool
    from schema_salad.exceptions import ValidationException

    context = LoadingContext()
    context.construct_tool_object = default_make_tool
    context.strict = True
    try:
        result: tuple[Any, list[tuple[KeyPath, str]]] = (load_tool(cwl_document(cli, source), context), [])
    except ValidationException as exc:
        result = (None, [_problem(str(exc), cli)])
    except Exception as exc:  # cwltool raises assorted errors for odd tools; report, don't crash
        result = (None, [(("cli",), f"cwltool cannot load the tool: {type(exc).__name__}: {exc}")])
    _cache[key] = result
    return result


def cli_problems(cli: dict[str, Any], source: str | None = None) -> list[tuple[KeyPath, str]]:
    from faice.cwl import checked

    if checked.is_known_good(cli):
        return []
    too_long = _long_list(cli)
    if too_long:
        return [too_long]
    problems = load_cli(cli, source)[1]
    if not problems:
        checked.remember_good(cli)
    return problems


def _long_list(cli: Any) -> tuple[KeyPath, str] | None:
    """The first list in ``cli`` longer than :data:`MAX_CLI_LIST` (the RED loader already
    bounds the depth and the number of values)."""
    stack: list[tuple[Any, KeyPath]] = [(cli, ("cli",))]
    while stack:
        value, path = stack.pop()
        if isinstance(value, dict):
            stack.extend((item, (*path, key)) for key, item in value.items())
        elif isinstance(value, list):
            if len(value) > MAX_CLI_LIST:
                return path, f"a list of {len(value):,} items; a tool description holds at most {MAX_CLI_LIST} per list"
            stack.extend((item, (*path, index)) for index, item in enumerate(value))
    return None


def _problem(text: str, cli: dict[str, Any]) -> tuple[KeyPath, str]:
    """cwltool's nested explanation → the key path it mentions and its last useful lines."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    lines = [re.sub(r"^\S+:\d+:\d+:\s*", "", line) for line in lines]
    path: KeyPath = ("cli",)
    mentioned = re.search(r"#cli/([A-Za-z0-9_.-]+)", text)
    if mentioned:
        name = mentioned.group(1)
        for section in ("inputs", "outputs"):
            if isinstance(cli.get(section), dict) and name in cli[section]:
                path = ("cli", section, name)
                break
    useful = [line for line in lines if not line.startswith(("checking ", "Object ", "tried "))] or lines
    return path, "cwltool: " + " ".join(useful[-3:])
