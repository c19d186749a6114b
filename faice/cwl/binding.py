"""CWL v1.0 command-line binding for the plain tools RED allows, without loading cwltool.

Loading cwltool costs about 0.6 s per process (its imports plus the CWL schema it parses on
every start), most of a one-batch ``faice exec``. RED's schema restricts ``cli`` to inputs of
scalar, File and Directory types (or arrays of them) bound by a literal ``inputBinding``
(``position``, ``prefix``, ``separate``, ``itemSeparator``) and outputs found by a glob. For
that subset the binding rules of CWL v1.0 fit on a page; ``tests/cwl/test_binding.py``
checks on generated tools and jobs that this module builds exactly the argv cwltool builds.
A tool outside the subset (a parameter reference in a glob, a shape the schema would not
accept) is left to cwltool: :func:`plain_tool` says which.

The rules, as cwltool applies them:

* ``baseCommand`` first, then every input binding sorted by ``(position, input name)``;
  a missing ``position`` is 0;
* ``null`` and ``false`` give nothing; ``true`` gives the prefix alone;
* an array with a non-empty ``itemSeparator`` gives one argument, its items joined; without
  one, the prefix once (if the array is not empty) followed by every item; an empty
  ``itemSeparator`` gives the prefix alone;
* ``separate: false`` glues prefix and value into one argument (it needs a prefix);
* a File or Directory is its path; numbers and strings are ``str()`` of the value.
"""

from __future__ import annotations

from typing import Any

from faice.cwl.types import check_value, parse_cli_type

_BINDING_KEYS = {"position", "prefix", "separate", "itemSeparator"}


class BindingError(ValueError):
    """A batch's inputs do not fit the tool (the message names the input)."""


def _has_reference(text: Any) -> bool:
    return isinstance(text, str) and ("$(" in text or "${" in text)


def plain_tool(cli: dict[str, Any]) -> bool:
    """True when every part of ``cli`` is in the subset this module handles like cwltool."""
    if cli.get("cwlVersion") not in (None, "v1.0", 1.0, "1.0") or cli.get("class") != "CommandLineTool":
        return False
    if set(cli) - {"cwlVersion", "class", "baseCommand", "inputs", "outputs", "stdout", "stderr", "doc"}:
        return False
    base = cli.get("baseCommand")
    if not (base is None or isinstance(base, str) or (isinstance(base, list) and all(isinstance(t, str) for t in base))):
        return False
    inputs, outputs = cli.get("inputs"), cli.get("outputs")
    if not isinstance(inputs, dict) or not isinstance(outputs, dict):
        return False
    for spec in inputs.values():
        if not isinstance(spec, dict) or parse_cli_type(spec.get("type")) is None:
            return False
        binding = spec.get("inputBinding")
        if not isinstance(binding, dict) or set(binding) - _BINDING_KEYS:
            return False
        if not isinstance(binding.get("position", 0), int) or isinstance(binding.get("position"), bool):
            return False
        if binding.get("separate") is False and "prefix" not in binding:
            return False  # cwltool's own error message is the better one
    for spec in outputs.values():
        if not isinstance(spec, dict):
            return False
        if _has_reference((spec.get("outputBinding") or {}).get("glob")):
            return False
    return not (_has_reference(cli.get("stdout")) or _has_reference(cli.get("stderr")))


def base_command(cli: dict[str, Any]) -> list[str]:
    base = cli.get("baseCommand")
    if base is None:
        return []
    return [str(token).strip() for token in ([base] if isinstance(base, str) else base)]


def build_argv(cli: dict[str, Any], job: dict[str, Any]) -> list[str]:
    """The argv of one batch; File/Directory values carry their container ``path``."""
    bound: list[tuple[int, str, list[str]]] = []
    for name, spec in cli["inputs"].items():
        value = job.get(name)
        _check(name, spec["type"], value)
        binding = spec["inputBinding"]
        bound.append((binding.get("position", 0), name, _arguments(binding, value)))
    argv = base_command(cli)
    for _, _, arguments in sorted(bound, key=lambda item: (item[0], item[1])):
        argv.extend(arguments)
    return argv


def _check(name: str, cli_type: str, value: Any) -> None:
    if value is None and not cli_type.endswith("?"):
        raise BindingError(f"Missing required input parameter '{name}'")
    problem = check_value(cli_type, value)  # types and, for int and long, Avro's ranges (as cwltool)
    if problem:
        raise BindingError(f"input '{name}': {problem}")


def _text(value: Any) -> str:
    if isinstance(value, dict):
        return str(value["path"])
    return str(value)


def _arguments(binding: dict[str, Any], value: Any) -> list[str]:
    prefix = binding.get("prefix")
    separate = binding.get("separate", True)
    if value is None or value is False:
        return []
    if value is True:
        return [prefix] if prefix else []
    if isinstance(value, list):
        separator = binding.get("itemSeparator")
        if separator and value:
            return _prefixed(prefix, separate, separator.join(_text(item) for item in value))
        lead = [prefix] if prefix and value else []
        if "itemSeparator" in binding:
            return lead  # an empty separator binds no item (cwltool's reading of the spec)
        # Items get an empty binding of their own: no prefix; booleans among them vanish.
        return lead + [_text(item) for item in value if not isinstance(item, bool)]
    return _prefixed(prefix, separate, _text(value))


def _prefixed(prefix: str | None, separate: bool, text: str) -> list[str]:
    if prefix is None:
        return [text]
    return [prefix, text] if separate else [prefix + text]
