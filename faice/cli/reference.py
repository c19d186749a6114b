"""The "Every command and flag" section of docs/cli.md, generated from the argument parser.

``python -m faice.cli.reference docs/cli.md`` rewrites the section; the docs test fails when
the file differs from what this module generates, so the reference cannot drift from the
program (and never shows argparse internals such as ``==SUPPRESS==``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

HEADING = "## Every command and flag"
INTRO = (
    "Generated from the argument parser (`python -m faice.cli.reference docs/cli.md`);\n"
    "`tests/examples/test_docs.py` fails when this section differs from the program.\n"
)


def commands(parser: argparse.ArgumentParser,
             prefix: str = "faice") -> Iterator[tuple[str, str, argparse.ArgumentParser]]:
    """(command, one-line help, parser) of every command and subcommand, depth first."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            for name, sub in action.choices.items():
                yield f"{prefix} {name}", helps.get(name, ""), sub
                yield from commands(sub, f"{prefix} {name}")


def _argument(action: argparse.Action) -> str:
    if not action.option_strings:
        return f"`{action.metavar or action.dest}`"
    if action.nargs == 0:
        return ", ".join(f"`{o}`" for o in action.option_strings)
    if action.metavar:
        value = action.metavar if isinstance(action.metavar, str) else " ".join(action.metavar)
    elif action.choices:
        value = "{" + ",".join(str(c) for c in action.choices) + "}"
    else:
        value = action.dest.upper()
    if action.nargs == "?":
        value = f"[{value}]"
    return ", ".join(f"`{o} {value}`" for o in action.option_strings)


def _help(action: argparse.Action) -> str:
    text = action.help or ""
    if "%(" in text:
        text = text % {"default": action.default, "prog": "faice", "choices": action.choices}
    return text.replace("|", "\\|").replace("\n", " ")


def section() -> str:
    from faice.cli.parser import build_parser

    parts = [HEADING, "", INTRO]
    for name, summary, parser in commands(build_parser()):
        parts.append(f"#### `{name}`\n")
        parts.append(f"{summary}\n")
        # In the order --help shows them: positionals, options, then each argument group.
        ordered = [a for group in parser._action_groups for a in group._group_actions]
        rows = [a for a in ordered
                if a.help != argparse.SUPPRESS and not isinstance(a, argparse._HelpAction | argparse._SubParsersAction)]
        if rows:
            parts.append("| argument | meaning |\n| --- | --- |")
            parts.extend(f"| {_argument(a)} | {_help(a)} |" for a in rows)
            parts.append("")
    return "\n".join(parts).rstrip("\n") + "\n"


def rewrite(path: Path) -> bool:
    """Replace the section (to the end of the file); True when the file changed."""
    text = path.read_text(encoding="utf-8")
    head = text.split(HEADING, 1)[0]
    new = head + section()
    if new == text:
        return False
    path.write_text(new, encoding="utf-8")
    return True


if __name__ == "__main__":
    print("changed" if rewrite(Path(sys.argv[1])) else "unchanged")
