"""The reference docs stay true to the program: every CLI flag is documented, links resolve."""

from __future__ import annotations

import argparse
import re

import pytest
from helpers_examples import EXAMPLES, REPO

DOCS = REPO / "docs"
OWN_DOCS = ("index.md", "cli.md", "red-reference.md", "migrating.md")


def _commands(parser: argparse.ArgumentParser, prefix: str = "faice"):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield f"{prefix} {name}", sub
                yield from _commands(sub, f"{prefix} {name}")


def _all_commands():
    from faice.cli.parser import build_parser

    return list(_commands(build_parser()))


@pytest.mark.parametrize("command,parser", _all_commands(), ids=lambda v: v if isinstance(v, str) else "")
def test_cli_md_documents_every_command_and_flag(command, parser):
    text = (DOCS / "cli.md").read_text()
    assert f"#### `{command}`" in text, f"docs/cli.md has no section for {command}"
    section = text.split(f"#### `{command}`", 1)[1].split("\n#### ", 1)[0]
    for action in parser._actions:
        for option in action.option_strings:
            if option not in ("-h", "--help"):
                assert f"`{option}" in section, f"docs/cli.md does not document {command} {option}"


def _markdown_files():
    files = [DOCS / name for name in OWN_DOCS if (DOCS / name).exists()]
    files += sorted(EXAMPLES.glob("*/README.md")) + [EXAMPLES / "README.md"]
    return [f for f in files if f.exists()]


@pytest.mark.parametrize("page", _markdown_files(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_relative_links_resolve(page):
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
        if "://" in target or target.startswith("mailto:"):
            continue
        assert (page.parent / target).exists(), f"{page.relative_to(REPO)} links to missing {target}"


def test_docs_index_links_every_reference_page():
    index = (DOCS / "index.md").read_text()
    for name in ("cli.md", "red-reference.md", "migrating.md", "connectors.md", "agency.md", "slurm.md"):
        assert f"({name})" in index, f"docs/index.md does not link {name}"
