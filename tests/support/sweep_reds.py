"""The small RED document the sweep and search tests vary, and how they read its problems."""

from __future__ import annotations

from faice.errors import format_key_path


def red(**top) -> dict:
    """A small valid single-batch RED document; keyword arguments replace top-level keys."""
    document = {
        "redVersion": "9",
        "cli": {
            "cwlVersion": "v1.0",
            "class": "CommandLineTool",
            "baseCommand": "train",
            "inputs": {
                "learning_rate": {"type": "float", "inputBinding": {"prefix": "--lr"}},
                "batch_size": {"type": "int", "inputBinding": {"prefix": "--bs"}},
                "optimizer": {"type": "string?", "inputBinding": {"prefix": "--opt"}},
                "log": {"type": "string", "inputBinding": {"prefix": "--log"}},
            },
            "outputs": {},
        },
        "inputs": {"learning_rate": 0.1, "batch_size": 8, "log": "run.log"},
        "outputs": {},
        "container": {"engine": "docker", "settings": {"image": {"url": "python:3.12"}, "ram": 256}},
    }
    document.update(top)
    return document


def paths(problems) -> list[str]:
    return [format_key_path(p.path) for p in problems]


def messages_by_path(problems) -> dict[str, str]:
    """Every problem's message under its key path, one a line (a path can have several)."""
    found: dict[str, str] = {}
    for problem in problems:
        key = format_key_path(problem.path)
        found[key] = found.get(key, "") + problem.message + "\n"
    return found


def assert_messages(problems, expected: dict[str, str]) -> None:
    """Each key path in ``expected`` has a problem whose message contains the text given there
    (all misses are named at once)."""
    found = messages_by_path(problems)
    missing = {path: text for path, text in expected.items() if text not in found.get(path, "")}
    assert not missing, f"not found: {missing}\nproblems: {found}"
