"""RED files written as YAML text by the tests (where line numbers or the text as a user
writes it matter)."""

from __future__ import annotations


def red_head(base_command: str) -> str:
    """The lines every RED 9 file opens with, up to the cli's ``baseCommand`` (as YAML, e.g.
    ``cat`` or ``[python3, train.py]``). What follows is the rest of ``cli`` (``  inputs:``,
    indented by two), then the top-level keys; no braces, so ``.format`` can follow."""
    return ('redVersion: "9"\n'
            "cli:\n"
            "  cwlVersion: v1.0\n"
            "  class: CommandLineTool\n"
            f"  baseCommand: {base_command}\n")
