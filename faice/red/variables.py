"""``{{name}}`` variables: syntax, where they may appear, and filling them.

Values come, in this order, from ``--variables`` files (later files win), the keyring
(service ``--keyring-service``, username = variable name) and finally a prompt on the
terminal (``getpass`` for protected names). Every filled value is a secret, registered with
:data:`faice.secrets.REDACTOR` before anything can print it, except one used only as a
``host``, ``port`` or ``username``: an address is not a secret, and masking it made every
connection error unreadable (``login refused for ********@********:********``). Written
under a ``_`` key (``_host``) it is protected again.

Unlike upstream, a field that is exactly ``{{name}}`` can receive a number or boolean: a
variables-file value keeps its YAML type, and text for integer/boolean fields such as
``port`` or ``writable`` is converted when it parses as one.
"""

from __future__ import annotations

import copy
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from faice.errors import KeyPath, Problem, VariableError, format_key_path
from faice.secrets import REDACTOR, is_protected_key, normalise_protected_keys, protected_values

ALLOWED_PARENTS = frozenset({"access", "auth"})
# Where a variable's value says where to connect, not how to get in: not a secret.
ADDRESS_KEYS = frozenset({"host", "port", "username"})
INTEGER_KEYS = frozenset({"port"})
BOOLEAN_KEYS = frozenset({"writable", "disableSSLVerification"})
TRUE_TEXTS, FALSE_TEXTS = frozenset({"true", "yes"}), frozenset({"false", "no"})
INTEGER_TEXT = re.compile(r"^[+-]?\d+$")
KEYRING_HINT = (
    "faice: hint: no usable keyring ({reason}); variables come from --variables files and "
    "prompts only (install a keyring backend such as keyrings.alt to store them)"
)


# ---------------------------------------------------------------- syntax


def find_variables(text: str) -> list[str]:
    """Names of the ``{{name}}`` variables in ``text``, unique, in order of appearance.

    The name is the literal text between the braces (no trimming). Raises ValueError on an
    empty name, nested or stray braces, or an unclosed ``{{``.
    """
    names: list[str] = []
    position = 0
    while True:
        start = text.find("{{", position)
        stray = text.find("}}", position)
        if stray != -1 and (start == -1 or stray < start):
            raise ValueError(f"'}}}}' at character {stray + 1} closes no '{{{{'")
        if start == -1:
            return names
        end = text.find("}}", start + 2)
        if end == -1:
            raise ValueError(f"'{{{{' at character {start + 1} is never closed with '}}}}'")
        name = text[start + 2 : end]
        if not name:
            raise ValueError(f"empty variable name '{{{{}}}}' at character {start + 1}")
        if "{" in name or "}" in name:
            raise ValueError(f"nested or extra braces in '{{{{{name}}}}}' at character {start + 1}")
        if name not in names:
            names.append(name)
        position = end + 2


def variable_problems(data: Any, source: str) -> list[Problem]:
    """Variable syntax errors, and variables outside an ``access``/``auth`` block."""
    from faice.red.load import Document

    document = Document(source, data)
    problems = []
    for path, text, allowed, _protected in _strings(data):
        if "{{" not in text and "}}" not in text:
            continue
        try:
            find_variables(text)
        except ValueError as exc:
            message = f"invalid variable: {exc}"
        else:
            if allowed:
                continue
            message = "{{variables}} are only allowed below an access or auth key (connector access, image auth, execution access)"
        problems.append(Problem(source, path, message, *document.locate(path)))
    return problems


def _strings(data: Any, path: KeyPath = (), allowed: bool = False, protected: bool = False) -> Iterator[tuple[KeyPath, str, bool, bool]]:
    """(path, text, below access/auth, below a protected key) of every string value."""
    if isinstance(data, str):
        yield path, data, allowed, protected
    elif isinstance(data, dict):
        for key, value in data.items():
            yield from _strings(value, (*path, key), allowed or key in ALLOWED_PARENTS, protected or is_protected_key(key))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            yield from _strings(value, (*path, index), allowed, protected)


# ---------------------------------------------------------------- sources


@dataclass
class VariableSources:
    """Where variable values come from: files, a keyring service and (maybe) the terminal."""

    files: list[str] = field(default_factory=list)
    keyring_service: str = "red"
    non_interactive: bool = False

    def file_values(self, addresses: frozenset[str] = frozenset()) -> dict[str, Any]:
        """The merged mapping of every variables file; later files win. Every value is
        registered as a secret except those of the names in ``addresses``."""
        from faice.red.load import load_mapping, to_plain

        values: dict[str, Any] = {}
        for source in self.files:
            document = load_mapping(source, "variables file")
            data = to_plain(document.data)
            for name, value in data.items():
                if not isinstance(name, str):
                    raise VariableError(f"{document.name}: variable names must be strings, got {name!r}")
                if isinstance(value, (dict, list)) or value is None:
                    raise VariableError(
                        f"{document.name}: {name}: expected a string, number or boolean value, "
                        f"got {'nothing' if value is None else type(value).__name__}"
                    )
                values[name] = value
        for name, value in values.items():
            if name not in addresses:
                REDACTOR.add_variable(value)
        return values


class _Keyring:
    """The keyring, or its absence; a failure disables it and prints one hint."""

    def __init__(self, service: str) -> None:
        self.service = service
        self._backend: Any = None
        self._checked = False
        self._hinted = False
        self.usable = False

    def backend(self) -> Any:
        if not self._checked:
            self._checked = True
            try:
                import keyring
                from keyring.backends import chainer, fail

                backend = keyring.get_keyring()
                if isinstance(backend, fail.Keyring):
                    raise RuntimeError("no keyring backend is installed")
                if isinstance(backend, chainer.ChainerBackend) and not backend.backends:
                    raise RuntimeError("no keyring backend is installed")
            except Exception as exc:
                self._disable(exc)
            else:
                self._backend, self.usable = backend, True
        return self._backend

    def get(self, name: str) -> str | None:
        backend = self.backend()
        if not self.usable:
            return None
        try:
            return backend.get_password(self.service, name)
        except Exception as exc:  # NoKeyringError, a locked keyring, D-Bus trouble …
            self._disable(exc)
            return None

    def store(self, values: dict[str, str]) -> bool:
        backend = self.backend()
        if not self.usable:
            return False
        try:
            for name, value in values.items():
                backend.set_password(self.service, name, value)
        except Exception as exc:
            self._disable(exc)
            return False
        return True

    def _disable(self, exc: Exception) -> None:
        self.usable = False
        self._backend = None
        if not self._hinted:
            self._hinted = True
            reason = REDACTOR.redact(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            _say(KEYRING_HINT.format(reason=reason))


def _say(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


# ---------------------------------------------------------------- filling


def fill_experiment(experiment: Any, sources: VariableSources | None) -> None:
    """Fill every ``{{variable}}`` of ``experiment.data`` and its batches, in place.

    Afterwards ``_key`` names are normalised to ``key`` in the data engines act on: the
    batches' inputs/outputs and the document's ``container`` and ``execution`` sections.
    """
    sources = sources or VariableSources()
    places = _variable_places(experiment.data, experiment.batches)
    REDACTOR.add_all(protected_values(experiment.data))
    if places:
        values = resolve(places, sources, experiment.source)
        _replace_contents(experiment.data, fill(experiment.data, values))
        for batch in experiment.batches:
            batch.inputs = fill(batch.inputs, values)
            batch.outputs = fill(batch.outputs, values)
            if batch.cloud is not None:
                batch.cloud = fill(batch.cloud, values)
        REDACTOR.add_all(protected_values(experiment.data))
    for batch in experiment.batches:
        REDACTOR.add_all(protected_values(batch.inputs))
        REDACTOR.add_all(protected_values(batch.outputs))
        batch.inputs = normalise_protected_keys(batch.inputs)
        batch.outputs = normalise_protected_keys(batch.outputs)
    for section in ("container", "execution"):
        if section in experiment.data:
            experiment.data[section] = normalise_protected_keys(experiment.data[section])


def _variable_places(data: dict, batches: list) -> dict[str, dict[str, Any]]:
    """name → {"path": first key path, "protected": any occurrence under a protected key,
    "address": every occurrence is (part of) a ``host``, ``port`` or ``username``}."""
    places: dict[str, dict[str, Any]] = {}

    def visit(root: Any, prefix: KeyPath) -> None:
        for path, text, _allowed, protected in _strings(root, prefix):
            if "{{" not in text:
                continue
            try:
                names = find_variables(text)
            except ValueError as exc:
                raise VariableError(f"{format_key_path(path)}: invalid variable: {exc}") from None
            address = not protected and bool(path) and path[-1] in ADDRESS_KEYS
            for name in names:
                place = places.setdefault(name, {"path": path, "protected": False, "address": True})
                place["protected"] = place["protected"] or protected
                place["address"] = place["address"] and address

    visit(data, ())
    for batch in batches:
        visit(batch.inputs, ("batches", batch.index, "inputs"))
        visit(batch.outputs, ("batches", batch.index, "outputs"))
    return places


def resolve(places: dict[str, dict[str, Any]], sources: VariableSources, source: str) -> dict[str, Any]:
    """A value for every variable name, or one VariableError listing all that are missing."""
    addresses = frozenset(name for name, place in places.items() if place["address"])
    file_values = sources.file_values(addresses)
    values = {name: file_values[name] for name in places if name in file_values}
    missing = [name for name in places if name not in values]
    keyring = _Keyring(sources.keyring_service)
    for name in missing:
        found = keyring.get(name)
        if found is not None:
            if name not in addresses:
                REDACTOR.add_variable(found)
            values[name] = found
    missing = [name for name in places if name not in values]
    if not missing:
        return values
    if sources.non_interactive or not _interactive():
        listed = "\n".join(
            f"  {name}  (used at {format_key_path(places[name]['path'])})" for name in missing
        )
        why = "--non-interactive" if sources.non_interactive else "stdin is not a terminal"
        raise VariableError(
            f"{source}: {len(missing)} variable{'s' if len(missing) != 1 else ''} could not be resolved ({why}):\n{listed}",
            hint=(
                f"give them in a file with --variables FILE, store them in keyring service "
                f"'{sources.keyring_service}', or run interactively"
            ),
        )
    prompted = _prompt(missing, places)
    values.update(prompted)
    _offer_store(prompted, keyring)
    return values


def _interactive() -> bool:
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except (ValueError, OSError):
        return False


def _prompt(names: list[str], places: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Ask for each name on the terminal; prompts go to stderr, never stdout."""
    import getpass

    _say("Asking for variables:")
    answers: dict[str, str] = {}
    for name in names:
        if places[name]["protected"]:
            value = getpass.getpass(f"{name} (protected): ", stream=sys.stderr)
        else:
            value = _read_line(f"{name}: ")
        if not places[name]["address"]:
            REDACTOR.add_variable(value)
        answers[name] = value
    return answers


def _read_line(prompt: str) -> str:
    sys.stderr.write(prompt)
    sys.stderr.flush()
    line = sys.stdin.readline()
    if not line:
        raise VariableError("no answer: end of input while asking for variables")
    return line.rstrip("\r\n")


def _offer_store(prompted: dict[str, str], keyring: _Keyring) -> None:
    if not prompted:
        return
    keyring.backend()
    if not keyring.usable:
        return
    count = len(prompted)
    answer = _read_line(f"Store {count} value{'s' if count != 1 else ''} in keyring '{keyring.service}'? [y/N] ")
    if answer.strip().lower() in ("y", "yes") and keyring.store(prompted):
        _say(f"Stored {count} value{'s' if count != 1 else ''} in keyring '{keyring.service}'.")


def fill(data: Any, values: dict[str, Any], key: Any = None) -> Any:
    """A copy of ``data`` with every ``{{name}}`` replaced; see the module doc for types."""
    if isinstance(data, str):
        if "{{" not in data:
            return data
        names = find_variables(data)
        if len(names) == 1 and data == "{{" + names[0] + "}}":
            return _typed(values[names[0]], key)
        text = data
        for name in names:
            text = text.replace("{{" + name + "}}", _text(values[name]))
        return text
    if isinstance(data, dict):
        return {k: fill(v, values, k) for k, v in data.items()}
    if isinstance(data, list):
        return [fill(v, values, key) for v in data]
    return copy.deepcopy(data)


def _typed(value: Any, key: Any) -> Any:
    """A whole-field value: keep a file's number/bool; convert text for integer/boolean keys."""
    if isinstance(value, str):
        if key in INTEGER_KEYS and INTEGER_TEXT.match(value.strip()):
            return int(value.strip())
        if key in BOOLEAN_KEYS and value.strip().lower() in TRUE_TEXTS | FALSE_TEXTS:
            return value.strip().lower() in TRUE_TEXTS
    return value


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _replace_contents(target: dict, new: dict) -> None:
    target.clear()
    target.update(new)
