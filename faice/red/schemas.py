"""The JSON Schemas shipped in ``faice.schemas``, validation against them, and ``faice schema``.

jsonschema's own messages are written for schema authors ("... is not valid under any of the
given schemas"); :func:`schema_problems` turns every error into the key path of the offending
value and a sentence that says what was expected. The schemas choose between alternatives with
``if``/``then`` wherever a discriminating key exists (``batches``, ``class``, ``engine``), so the
user sees the errors of the branch they meant, not the noise of all branches.
"""

from __future__ import annotations

import json
from functools import cache, lru_cache
from typing import Any

from faice.errors import FaiceError, KeyPath, describe

SCHEMA_BASE = "https://faice.dev/schemas/"

# Upstream names first (``faice schema list`` of cc-faice 8/9), then faice's own.
SCHEMA_NAMES = (
    "red",
    "red-engine-container-docker",
    "red-engine-execution-ccfaice",
    "red-engine-execution-ccagency",
    "red-8",
    "red-9",
    "red-8-engine-execution-ccagency",
    "red-engine-execution-slurm",
    "faice-sweep",
    "faice-metrics",
    "faice-records",
    "red-definitions",
)

Found = tuple[KeyPath, str]  # (key path, message)


def schema_names() -> list[str]:
    return list(SCHEMA_NAMES)


@cache
def _load(name: str) -> dict[str, Any]:
    from importlib.resources import files

    text = files("faice.schemas").joinpath(f"{name}.json").read_text(encoding="utf-8")
    return json.loads(text)


def load_schema(name: str) -> dict[str, Any]:
    """The schema called ``name`` (see :func:`schema_names`); FaiceError when there is none."""
    if name not in SCHEMA_NAMES:
        raise FaiceError(f'Schema "{name}" not found. Use "faice schema list" for available schemas.')
    return _load(name)


@lru_cache(maxsize=1)
def _registry():
    from referencing import Registry, Resource

    resources = [(_load(n)["$id"], Resource.from_contents(_load(n))) for n in SCHEMA_NAMES]
    return Registry().with_resources(resources)


@cache
def _validator(name: str):
    from jsonschema import Draft202012Validator

    return Draft202012Validator(load_schema(name), registry=_registry())


def bundled_schema(name: str) -> dict[str, Any]:
    """``name``'s schema with every schema it refers to embedded under ``$defs`` (by ``$id``),
    so that ``faice schema show`` prints something any 2020-12 validator can use on its own."""
    root = dict(load_schema(name))
    needed: list[str] = []

    def collect(node: Any) -> None:
        if isinstance(node, dict):
            target = node.get("$ref")
            if isinstance(target, str) and target.startswith(SCHEMA_BASE):
                other = target[len(SCHEMA_BASE) :].split("#")[0].removesuffix(".json")
                if other != name and other not in needed:
                    needed.append(other)
                    collect(_load(other))
            for value in node.values():
                collect(value)
        elif isinstance(node, list):
            for value in node:
                collect(value)

    collect(root)
    if needed:
        root["$defs"] = dict(root.get("$defs", {}))
        for other in needed:
            root["$defs"][f"bundled:{other}"] = _load(other)
    return root


# ------------------------------------------------------------------- errors → problems


def schema_problems(name: str, data: Any) -> list[Found]:
    """Every way ``data`` (plain JSON-like data) breaks schema ``name``, as (path, message)."""
    found: list[Found] = []
    for error in _validator(name).iter_errors(json_ready(data)):
        for item in explain(error):
            if item not in found:
                found.append(item)
    return found


def json_ready(data: Any) -> Any:
    """Plain data with every mapping key as a string (non-string keys are reported separately)."""
    if isinstance(data, dict):
        return {(k if isinstance(k, str) else str(k)): json_ready(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [json_ready(v) for v in data]
    return data


TYPE_WORDS = {
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "a boolean (true or false)",
    "object": "a mapping",
    "array": "a list",
    "null": "null",
}


def _expected_types(types: Any) -> str:
    names = [types] if isinstance(types, str) else list(types)
    words = [TYPE_WORDS.get(n, n) for n in names]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def _short(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else repr(value)


def explain(error) -> list[Found]:
    """One jsonschema error as user-facing (path, message) pairs."""
    from jsonschema.exceptions import best_match

    path: KeyPath = tuple(error.absolute_path)
    kind = error.validator
    value = error.validator_value
    instance = error.instance
    schema = error.schema if isinstance(error.schema, dict) else {}
    described = schema.get("description")

    if "propertyNames" in error.schema_path:
        hint = described or "a valid name"
        return [(path + (str(instance),), f"{instance!r} is not a valid name here: expected {hint}")]
    if kind in ("oneOf", "anyOf"):
        keys = _required_alternatives(value)
        if keys and isinstance(instance, dict):
            present = [k for k in keys if k in instance]
            if len(present) > 1:
                return [(path, f"use only one of the keys {', '.join(present)}")]
            return [(path, f"expected one of the keys {', '.join(keys)}")]
        if error.context:
            return explain(best_match(error.context))
        return [(path, error.message)]
    if kind == "additionalProperties" and isinstance(instance, dict):
        allowed = sorted(schema.get("properties", {}))
        extras = [k for k in instance if k not in allowed]
        tail = f"expected one of: {', '.join(allowed)}" if allowed else "no keys are allowed here"
        return [(path + (k,), f"unknown key {k!r}; {tail}") for k in extras]
    if kind == "required":
        return [(path, error.message)]
    if kind == "type":
        tail = " (leave the key out instead of null)" if instance is None else ""
        return [(path, f"expected {_expected_types(value)}, got {describe(instance)}{tail}")]
    if kind == "enum":
        if described:
            return [(path, f"expected {described}, got {describe(instance)}")]
        return [(path, f"expected one of {', '.join(_short(v) for v in value)}, got {describe(instance)}")]
    if kind == "const":
        return [(path, f"expected {_short(value)}, got {describe(instance)}")]
    if kind in ("pattern", "format"):
        return [(path, f"expected {described or 'a string matching ' + repr(value)}, got {describe(instance)}")]
    if kind == "minLength" and value == 1:
        return [(path, "expected a non-empty string")]
    if kind == "minItems":
        if value == 1:
            return [(path, "expected a non-empty list")]
        return [(path, f"expected at least {value} items, got {len(instance)}")]
    if kind == "maxItems":
        return [(path, f"expected at most {value} items, got {len(instance)}")]
    if kind in ("minProperties", "maxProperties") and isinstance(instance, dict):
        names = sorted(schema.get("properties", {}))
        if schema.get("maxProperties") == 1 and names:
            return [(path, f"expected exactly one of the keys {', '.join(names)}")]
        return [(path, "expected at least one key" if kind == "minProperties" else error.message)]
    if kind == "minimum":
        return [(path, f"expected a number >= {value}, got {describe(instance)}")]
    if kind == "exclusiveMinimum":
        return [(path, f"expected a number > {value}, got {describe(instance)}")]
    if kind is None or schema is False or error.schema is False:
        return [(path, "not allowed here")]
    return [(path, error.message)]


def _required_alternatives(alternatives: Any) -> list[str]:
    """``[a, b]`` when every alternative is just ``{"required": [name]}`` (exactly one key of)."""
    keys: list[str] = []
    if not isinstance(alternatives, list):
        return []
    for alternative in alternatives:
        if not (isinstance(alternative, dict) and set(alternative) == {"required"}):
            return []
        if len(alternative["required"]) != 1:
            return []
        keys.append(alternative["required"][0])
    return keys
