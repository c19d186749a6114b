"""RED documents like upstream's tests/red/*.json (§8.3), on the faice test image."""

from __future__ import annotations

import copy
from typing import Any

IMAGE = "faice-test/base:bookworm"


def minimal(url: str = "http://127.0.0.1:1", user: str = "alice", password: str = "x", *, command: Any = "echo", value: str = "test", image: str = IMAGE, **cli: Any) -> dict[str, Any]:
    return {
        "redVersion": "9",
        "cli": {
            "cwlVersion": "v1.0",
            "class": "CommandLineTool",
            "baseCommand": command,
            "inputs": {"some_string": {"type": "string", "inputBinding": {"position": 0}}},
            "outputs": {},
            **cli,
        },
        "inputs": {"some_string": value},
        "outputs": {},
        "container": {"engine": "docker", "settings": {"image": {"url": image}, "ram": 256}},
        "execution": {"engine": "ccagency", "settings": {"access": {"url": url, "auth": {"username": user, "password": password}}}},
    }


def multi_batch(values: list[str], **kwargs: Any) -> dict[str, Any]:
    red = minimal(**kwargs)
    red["cli"]["outputs"] = {"mystdout": {"type": "stdout"}}
    del red["inputs"], red["outputs"]
    red["batches"] = [{"inputs": {"some_string": v}, "outputs": {}} for v in values]
    return red


def sleeping(seconds: int, **kwargs: Any) -> dict[str, Any]:
    return minimal(command="sleep", value=str(seconds), **kwargs)


def without(red: dict[str, Any], *path: str) -> dict[str, Any]:
    red = copy.deepcopy(red)
    node = red
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    return red
