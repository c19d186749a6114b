"""Printing data as JSON or YAML the way upstream faice did (JSON indented by 4, YAML block
style with sorted keys)."""

from __future__ import annotations

import io
import json
from typing import Any


def dumps(data: Any, fmt: str = "yaml") -> str:
    if fmt == "json":
        return json.dumps(data, indent=4) + "\n"
    from ruamel.yaml import YAML

    from faice.red.load import to_plain

    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = False
    yaml.sort_base_mapping_type_on_output = True  # type: ignore[assignment]
    stream = io.StringIO()
    yaml.dump(_sorted(to_plain(data)), stream)
    return stream.getvalue()


def _sorted(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _sorted(data[k]) for k in sorted(data, key=str)}
    if isinstance(data, list):
        return [_sorted(v) for v in data]
    return data


def extension(fmt: str) -> str:
    return "json" if fmt == "json" else "yml"
