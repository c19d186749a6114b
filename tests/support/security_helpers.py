"""RED documents and checks shared by the agency attack tests."""

from __future__ import annotations

import copy
import sqlite3
from typing import Any

import agency_reds as reds


def file_input_red(connector: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """A RED whose one File input ``f`` comes through ``connector`` and is printed with cat."""
    red = reds.minimal(command="cat", **kwargs)
    red["cli"]["inputs"] = {"f": {"type": "File", "inputBinding": {"position": 0}}}
    red["cli"]["outputs"] = {"out": {"type": "stdout"}}
    red["cli"]["stdout"] = "out.txt"
    red["inputs"] = {"f": {"class": "File", "connector": copy.deepcopy(connector)}}
    return red


def file_output_red(connector: dict[str, Any]) -> dict[str, Any]:
    """A RED that writes ``o.txt`` and sends it through ``connector`` (output ``o``)."""
    red = reds.minimal(command="touch", value="o.txt")
    red["cli"]["outputs"] = {"o": {"type": "File", "outputBinding": {"glob": "o.txt"}}}
    red["outputs"] = {"o": {"class": "File", "connector": copy.deepcopy(connector)}}
    return red


def stored_text(server) -> str:
    """Everything the server stored (its SQLite database dump) and logged."""
    path = server.db_url[len("sqlite:///"):]
    conn = sqlite3.connect(path)
    try:
        dump = "\n".join(conn.iterdump())
    finally:
        conn.close()
    return dump + server.log.read_text(errors="replace")
