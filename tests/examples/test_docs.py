"""The reference docs stay true to the program: every CLI flag is documented, links resolve."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

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


def test_cli_md_reference_is_generated_from_the_parser():
    """The flag tables are the parser's (no ``==SUPPRESS==``, no stale or missing flag)."""
    from faice.cli.reference import HEADING, section

    text = (DOCS / "cli.md").read_text()
    assert HEADING in text
    assert text.split(HEADING, 1)[1] == section().split(HEADING, 1)[1], \
        "docs/cli.md is stale: run python -m faice.cli.reference docs/cli.md"
    assert "SUPPRESS" not in text


# ---------------------------------------------------------------- running the command blocks
#
# Every ```sh / ```bash / ```console block of docs/*.md and examples/*/README.md is run, in
# order, by bash -euo pipefail, unless a marker comment on the line just above the block says
# otherwise:
#
#   <!-- docs-test: skip (needs a GPU) -->                the whole block is skipped
#   <!-- docs-test: skip-lines=2,4 (needs a CC-Agency) --> those lines are (with continuations)
#   <!-- docs-test: cwd=tests/data/docs/cli -->          the directory the page's blocks run in
#
# A skip always gives its reason. A page's blocks share one working directory: a temporary
# copy of the page's own directory (examples/X/README.md) or of the `cwd=` directory (a
# docs/ page must name one), so a later block sees what an earlier one made, as a reader
# following the page would. RED files there name `debian:bookworm-slim`, which cannot be
# pulled on the test machine: the copies use the locally built test image instead. HOME is a
# fresh directory; `faice` is this checkout's.

DOC_PAGES = sorted(DOCS.glob("*.md")) + sorted(EXAMPLES.glob("*/README.md")) + [EXAMPLES / "README.md"]
FENCE = re.compile(r"^```(sh|bash|shell|console)[ \t]*\n(.*?)^```", re.S | re.M)
MARKER = re.compile(r"<!--[ \t]*docs-test:[ \t]*([^\n]*?)[ \t]*-->[ \t]*\n?\Z")


class Block:
    def __init__(self, page, line: int, text: str, marker: str):
        self.page, self.line, self.text = page, line, text
        self.skip_reason = None
        self.skip_lines: set[int] = set()
        self.cwd = None
        reason = re.search(r"\(([^)]*)\)\s*$", marker)
        words = marker[: reason.start()] if reason else marker
        for word in words.split():
            if word == "skip":
                self.skip_reason = reason.group(1) if reason else ""
            elif word.startswith("skip-lines="):
                for part in word.split("=", 1)[1].split(","):
                    low, _, high = part.partition("-")
                    self.skip_lines.update(range(int(low), int(high or low) + 1))
            elif word.startswith("cwd="):
                self.cwd = word.split("=", 1)[1]
            else:
                raise AssertionError(f"{self.where}: unknown docs-test marker word {word!r}")
        if (self.skip_reason is not None or self.skip_lines) and not (reason and reason.group(1).strip()):
            raise AssertionError(f"{self.where}: a docs-test skip must give its reason in parentheses")

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"

    def script(self) -> tuple[str, int]:
        """The lines to run (prompts and shown output removed, skipped lines dropped) and how
        many were dropped; a skipped line takes its backslash continuations with it."""
        kept, dropped = [], 0
        lines = self.text.splitlines()
        console = any(line.startswith("$ ") for line in lines)
        skipping = continued = False
        for number, line in enumerate(lines, 1):
            if console:
                if line.startswith("$ "):
                    line = line[2:]
                elif not continued:
                    continue  # output shown in the block
            if not continued:
                skipping = number in self.skip_lines
            continued = line.rstrip().endswith("\\")
            if skipping:
                dropped += 1
            else:
                kept.append(line)
        return "\n".join(kept), dropped


def doc_blocks(page) -> list[Block]:
    text = page.read_text()
    blocks = []
    for match in FENCE.finditer(text):
        before = text[: match.start()]
        marker = MARKER.search(before)
        blocks.append(Block(page, before.count("\n") + 1, match.group(2), marker.group(1) if marker else ""))
    return blocks


def _block_pages():
    return [p for p in DOC_PAGES if p.exists() and doc_blocks(p)]


def _working_copy(page, blocks: list[Block], tmp_path, test_image: str):
    named = {b.cwd for b in blocks if b.cwd}
    assert len(named) <= 1, f"{page.relative_to(REPO)}: one cwd= per page"
    if named:
        source = REPO / named.pop()
    elif page.parent.parent == EXAMPLES:
        source = page.parent
    else:
        runnable = [b for b in blocks if b.skip_reason is None]
        assert not runnable, (f"{runnable[0].where}: a docs/ block needs <!-- docs-test: cwd=DIR --> "
                              "or <!-- docs-test: skip (reason) -->")
        return None
    if source.parent == EXAMPLES:
        # examples/X as tmp/examples/X, its siblings linked, so `../ml-guide` works as in a checkout.
        work = tmp_path / "examples" / source.name
        for sibling in EXAMPLES.iterdir():
            if sibling.is_dir() and sibling.name != source.name:
                (tmp_path / "examples").mkdir(exist_ok=True)
                (tmp_path / "examples" / sibling.name).symlink_to(sibling)
    else:
        work = tmp_path / "work"
    shutil.copytree(source, work, ignore=shutil.ignore_patterns("runs", "results", "pcam", "__pycache__", "vars.yml"))
    for red in [*work.glob("*.red.yml"), *work.glob("*.red.json")]:
        red.write_text(red.read_text().replace("debian:bookworm-slim", test_image))
    return work


@pytest.mark.docker
@pytest.mark.parametrize("page", _block_pages(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_command_block_runs(page, tmp_path, test_image, request):
    blocks = doc_blocks(page)
    if page.parent.name in ("ml-guide", "random-search"):
        request.getfixturevalue("ml_guide_image")  # built from the test image, as its README says
    work = _working_copy(page, blocks, tmp_path, test_image)
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "NO_COLOR": "1", "FAICE_CACHE_DIR": str(tmp_path / "cache")}
    for block in blocks:
        if block.skip_reason is not None:
            continue
        script, _dropped = block.script()
        if not script.strip():
            continue
        result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=work, env=env,
                                capture_output=True, text=True, timeout=240, stdin=subprocess.DEVNULL)
        assert result.returncode == 0, (f"{block.where}: the block failed (exit {result.returncode})\n{script}\n"
                                        f"--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-3000:]}")


def test_every_skipped_block_says_why_and_most_blocks_run(capsys):
    blocks = [b for p in DOC_PAGES if p.exists() for b in doc_blocks(p)]
    skipped_blocks = [b for b in blocks if b.skip_reason is not None]
    run = [b for b in blocks if b.skip_reason is None]
    skipped_lines = sum(b.script()[1] for b in run)
    ran_lines = sum(len([line for line in b.script()[0].splitlines() if line.strip()]) for b in run)
    with capsys.disabled():
        print(f"\ndocs command blocks: {len(blocks)}; run {len(run)} ({ran_lines} lines, "
              f"{skipped_lines} lines skipped), skipped {len(skipped_blocks)}: "
              + "; ".join(f"{b.where} ({b.skip_reason})" for b in skipped_blocks))
    assert all(b.skip_reason for b in skipped_blocks)
    assert len(run) > len(skipped_blocks)
