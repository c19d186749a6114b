"""Semantic checks of a RED file: what a JSON Schema cannot say.

Every check takes the plain RED data, never trusts its shape (schema problems are reported
separately, and these checks must not crash on a broken file) and returns ``(key path,
message)`` pairs; :mod:`faice.red.validate` adds file, line and column.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from faice.cwl.types import check_value, parse_cli_type
from faice.errors import KeyPath, describe
from faice.secrets import is_protected_key

Found = tuple[KeyPath, str]

IDENTIFIER = re.compile(r"^[a-zA-Z0-9_-]+$")
RED_VERSIONS = ("8", "9")
SECRET_PARENTS = frozenset({"access", "auth"})
VARIABLE = re.compile(r"\{\{[^{}]+\}\}")
# A CWL parameter reference to an input: $(inputs.NAME…), $(inputs['NAME']…), $(inputs["NAME"]…)
INPUT_REFERENCE = re.compile(r"(?<!\\)\$\(\s*inputs(?:\.([A-Za-z_][A-Za-z0-9_]*)|\[\s*(['\"])(.*?)\2\s*\])")
PROSE_KEYS = frozenset({"doc", "label"})  # text for people: CWL never evaluates it


# ------------------------------------------------------------------- helpers


def _mapping(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def job_parts(data: dict) -> Iterator[tuple[KeyPath, dict]]:
    """(path prefix, batch) for every batch: ``batches[i]`` or the top level (single form)."""
    batches = data.get("batches")
    if "batches" in data:
        if isinstance(batches, list):
            for index, batch in enumerate(batches):
                if isinstance(batch, dict):
                    yield ("batches", index), batch
        return
    yield (), data


def sweep_parameter_names(data: dict) -> set[str]:
    """Names set by the top-level sweep (grid, zip, random and search parameters)."""
    sweep = _mapping(data.get("sweep"))
    names = set(_mapping(sweep.get("grid"))) | set(_mapping(sweep.get("zip")))
    names |= set(_mapping(_mapping(sweep.get("random")).get("parameters")))
    names |= set(_mapping(_mapping(sweep.get("search")).get("parameters")))
    return {n for n in names if isinstance(n, str)}


def _engine(section: Any) -> Any:
    return _mapping(section).get("engine")


# ------------------------------------------------------------------- checks


def red_version_problems(data: dict) -> list[Found]:
    """RED 8 and 9 only; an unquoted number is a schema problem, reported there."""
    version = data.get("redVersion")
    if "redVersion" not in data or str(version) in RED_VERSIONS:
        return []
    return [
        (
            ("redVersion",),
            f'expected "8" or "9", got {describe(version)}; faice reads RED 8 and RED 9 files '
            "(convert older files to RED 9 first)",
        )
    ]


def non_string_keys(data: Any, path: KeyPath = ()) -> list[tuple[KeyPath, Any]]:
    """(parent path, key) of every mapping key that YAML read as a non-string (``1:``, ``yes:``)."""
    found: list[tuple[KeyPath, Any]] = []
    if isinstance(data, dict):
        for key, value in data.items():
            if not isinstance(key, str):
                found.append((path, key))
                continue
            found += non_string_keys(value, path + (key,))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            found += non_string_keys(value, path + (index,))
    return found


def non_string_key_message(key: Any) -> str:
    return f"key {key!r} ({type(key).__name__}) is not a string; quote it"


def cli_problems(data: dict) -> list[Found]:
    """cli identifiers (upstream accepted any key silently), relative globs and parameter
    references to declared inputs."""
    found: list[Found] = []
    cli = _mapping(data.get("cli"))
    for section in ("inputs", "outputs"):
        for name in _mapping(cli.get(section)):
            if isinstance(name, str) and not IDENTIFIER.match(name):
                found.append(
                    (("cli", section, name), f"{name!r} is not a valid identifier: use letters, digits, _ and - only")
                )
    for name, spec in _mapping(cli.get("outputs")).items():
        glob = _mapping(_mapping(spec).get("outputBinding")).get("glob")
        if isinstance(glob, str) and glob.startswith("/"):
            found.append(
                (
                    ("cli", "outputs", name, "outputBinding", "glob"),
                    f"expected a glob relative to the output directory, got absolute path {glob!r}",
                )
            )
        elif isinstance(glob, str) and ".." in glob.split("/"):
            found.append(
                (
                    ("cli", "outputs", name, "outputBinding", "glob"),
                    f"expected a glob inside the output directory, got {glob!r} (uses ..)",
                )
            )
    for stream in ("stdout", "stderr"):  # the file the stream is copied to, in /cc/outputs
        named = cli.get(stream)
        if isinstance(named, str) and (named.startswith("/") or ".." in named.split("/")):
            found.append((("cli", stream), f"expected a file name inside the output directory, got {named!r} "
                                             "(an absolute path or '..')"))
    declared = {name for name in _mapping(cli.get("inputs")) if isinstance(name, str)}
    found += _reference_problems(cli, ("cli",), declared)
    return found


def _reference_problems(value: Any, path: KeyPath, declared: set[str]) -> list[Found]:
    """Parameter references (globs, valueFrom, arguments, stdout …) to inputs the cli does
    not declare: cwltool would fail on them only when the command is built."""
    if isinstance(value, str):
        found: list[Found] = []
        for match in INPUT_REFERENCE.finditer(value):
            name = match.group(1) or match.group(3)
            if name not in declared:
                found.append((path, f"the parameter reference to inputs.{name} names no input of the cli "
                                    f"(declared: {', '.join(sorted(declared)) or 'none'})"))
        return found
    if isinstance(value, dict):
        return [problem for key, item in value.items() if key not in PROSE_KEYS
                for problem in _reference_problems(item, (*path, key), declared)]
    if isinstance(value, list):
        return [problem for index, item in enumerate(value)
                for problem in _reference_problems(item, (*path, index), declared)]
    return []


def batch_problems(data: dict) -> list[Found]:
    """Batch inputs/outputs against the cli: known keys, required inputs, value types, classes."""
    found: list[Found] = []
    cli = _mapping(data.get("cli"))
    cli_inputs = _mapping(cli.get("inputs"))
    cli_outputs = _mapping(cli.get("outputs"))
    swept = sweep_parameter_names(data)
    for prefix, batch in job_parts(data):
        inputs = batch.get("inputs")
        if isinstance(inputs, dict):
            found += _input_problems(prefix + ("inputs",), inputs, cli_inputs, swept)
        outputs = batch.get("outputs")
        if isinstance(outputs, dict):
            found += _output_problems(prefix + ("outputs",), outputs, cli_outputs)
    return found


def _names(mapping: dict) -> str:
    names = [str(n) for n in mapping]
    return ", ".join(names) if names else "nothing"


def _input_problems(path: KeyPath, inputs: dict, cli_inputs: dict, swept: set[str]) -> list[Found]:
    found: list[Found] = []
    for name, value in inputs.items():
        if not isinstance(name, str):
            continue
        if name not in cli_inputs:
            found.append((path + (name,), f"{name!r} is not an input of cli (cli.inputs has: {_names(cli_inputs)})"))
            continue
        cli_type = _mapping(cli_inputs[name]).get("type")
        if name in swept or parse_cli_type(cli_type) is None:
            continue
        message = check_value(str(cli_type), value)
        if message:
            found.append((path + (name,), message))
        found += _mount_problems(path + (name,), value, output=False)
    for name, spec in cli_inputs.items():
        parsed = parse_cli_type(_mapping(spec).get("type"))
        if parsed and not parsed.optional and name not in inputs and name not in swept:
            found.append(
                (path, f"{name!r} is a required property (cli type {parsed} is not optional; add ? to make it so)")
            )
    return found


def _output_problems(path: KeyPath, outputs: dict, cli_outputs: dict) -> list[Found]:
    found: list[Found] = []
    for name, value in outputs.items():
        if not isinstance(name, str):
            continue
        if name not in cli_outputs:
            found.append((path + (name,), f"{name!r} is not an output of cli (cli.outputs has: {_names(cli_outputs)})"))
            continue
        cli_type = _mapping(cli_outputs[name]).get("type")
        got = _mapping(value).get("class")
        if isinstance(cli_type, str) and isinstance(got, str) and got != cli_type.rstrip("?"):
            found.append(
                (path + (name, "class"), f"expected class {cli_type.rstrip('?')} (cli output type {cli_type}), got {got}")
            )
        found += _mount_problems(path + (name,), value, output=True)
    return found


def _mount_problems(path: KeyPath, value: Any, *, output: bool) -> list[Found]:
    found: list[Found] = []
    items = enumerate(value) if isinstance(value, list) else [(None, value)]
    for index, item in items:
        item_path = path if index is None else path + (index,)
        connector = _mapping(_mapping(item).get("connector"))
        if connector.get("mount") is not True:
            continue
        where = item_path + ("connector", "mount")
        if output:
            found.append((where, "mount is only possible for Directory inputs, not for outputs"))
        elif _mapping(item).get("class") != "Directory":
            found.append((where, f"mount is only possible for Directory inputs, this is class {_mapping(item).get('class')}"))
    return found


def listing_problems(data: dict) -> list[Found]:
    """Listings name each entry once, with a plain name (no ``/``, ``.`` or ``..``)."""
    found: list[Found] = []

    def walk(path: KeyPath, listing: Any) -> None:
        if not isinstance(listing, list):
            return
        seen: set[str] = set()
        for index, entry in enumerate(listing):
            basename = _mapping(entry).get("basename")
            if isinstance(basename, str):
                if "/" in basename or basename in (".", ".."):
                    found.append((path + (index, "basename"), f"expected a plain file name, got {basename!r}"))
                elif basename in seen:
                    found.append((path + (index, "basename"), f"{basename!r} is listed twice"))
                seen.add(basename)
            walk(path + (index, "listing"), _mapping(entry).get("listing"))

    for prefix, batch in job_parts(data):
        for section in ("inputs", "outputs"):
            for name, value in _mapping(batch.get(section)).items():
                values = value if isinstance(value, list) else [value]
                for index, item in enumerate(values):
                    base = prefix + (section, name) + ((index,) if isinstance(value, list) else ())
                    walk(base + ("listing",), _mapping(item).get("listing"))
    return found


def engine_problems(data: dict) -> list[Found]:
    """nvidia-docker's replacement; an image reference a runtime can take; what the ccagency
    engine needs (``ram``, ``access``)."""
    found: list[Found] = []
    container = _mapping(data.get("container"))
    if container.get("engine") == "nvidia-docker":
        found.append(
            (
                ("container", "engine"),
                'the nvidia-docker engine is no longer supported: use engine "docker" with '
                "settings.gpus {vendor: nvidia, count: N}",
            )
        )
    url = _mapping(_mapping(container.get("settings")).get("image")).get("url")
    if isinstance(url, str) and url and "{{" not in url:  # exec refuses it before any runtime (faice.pipeline.plan)
        from faice.runtime.containers import check_image_ref

        bad_ref = check_image_ref(url)
        if bad_ref:
            found.append((("container", "settings", "image", "url"), bad_ref))
    execution = _mapping(data.get("execution"))
    if _engine(execution) == "ccagency":
        settings = container.get("settings")
        if container.get("engine") == "docker" and isinstance(settings, dict) and "ram" not in settings:
            found.append(
                (("container", "settings"), "'ram' is a required property for the ccagency engine (memory limit in MB)")
            )
        agency = execution.get("settings")
        if isinstance(agency, dict) and "access" not in agency:
            found.append(
                (("execution", "settings"), "'access' is a required property for the ccagency engine ({url, auth})")
            )
    return found


def variable_placement_problems(data: Any, path: KeyPath = (), secret_parent: bool = False) -> list[Found]:
    """``{{variables}}`` only below an ``access`` or ``auth`` key, and well-formed there.
    (Fallback until faice.red.variables.variable_problems exists.)"""
    found: list[Found] = []
    if isinstance(data, dict):
        for key, value in data.items():
            inside = secret_parent or key in SECRET_PARENTS
            found += variable_placement_problems(value, path + (key,), inside)
    elif isinstance(data, list):
        for index, value in enumerate(data):
            found += variable_placement_problems(value, path + (index,), secret_parent)
    elif isinstance(data, str) and ("{{" in data or "}}" in data):
        if not secret_parent:
            found.append((path, "{{variables}} are only allowed below an access or auth key"))
        elif "{{" in VARIABLE.sub("", data) or "}}" in VARIABLE.sub("", data):
            found.append((path, f"malformed variable in {data!r}: expected {{{{name}}}}"))
    return found


def protected_key_problems(data: Any, path: KeyPath = (), secret_parent: bool = False) -> list[Found]:
    """Protected keys (``password``, ``_name``, ...) only below ``access`` or ``auth``."""
    found: list[Found] = []
    if isinstance(data, dict):
        for key, value in data.items():
            if is_protected_key(key) and not secret_parent:
                found.append(
                    (path + (key,), f"protected key {key!r} is only allowed below an access or auth key")
                )
                continue
            found += protected_key_problems(value, path + (key,), secret_parent or key in SECRET_PARENTS)
    elif isinstance(data, list):
        for index, value in enumerate(data):
            found += protected_key_problems(value, path + (index,), secret_parent)
    return found


def semantic_problems(data: dict) -> list[Found]:
    """All checks of this module except variables/protected keys (see validate_red)."""
    return cli_problems(data) + batch_problems(data) + listing_problems(data) + engine_problems(data)
