"""The import structure of faice/, read from the code: no circles, no upward imports.

    cli → engines, agency (with its web pages, agency/ui) → pipeline → red, cwl, connectors, runtime → files, errors, secrets

A module may import its own layer or lower ones (within a layer, without circles); the
command line alone sees argparse, so no domain module can be handed a Namespace.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "faice"
LAYERS = {"cli": 5, "__main__": 5, "engines": 4, "agency": 4, "pipeline": 3,
          "red": 2, "cwl": 2, "connectors": 2, "runtime": 2, "schemas": 2}
# Programs of their own (started by Slurm as `python -m ...`), which parse their own argv.
OWN_ENTRY_POINTS = {"faice.engines.slurm.task", "faice.engines.slurm.worker"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in ROOT.rglob("*.py")}


def layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.get(parts[1], 1) if len(parts) > 1 else 1


def imports(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The faice modules ``module`` imports (anywhere in it, lazily or not)."""
    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module and name.startswith("faice"):
                found.add(name)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {m: imports(m, p, known) for m, p in known.items()}


def test_no_module_imports_a_higher_layer():
    upward = sorted(f"{a} -> {b}" for a, targets in graph().items() for b in targets if layer(b) > layer(a))
    assert upward == []


def test_there_is_no_import_circle():
    edges = graph()
    # A package's __init__ that re-exports its children is not a circle worth reporting.
    edges = {a: {b for b in bs if not (b.startswith(a + ".") or a.startswith(b + "."))} for a, bs in edges.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in edges:
        if v not in index:
            visit(v)
    assert circles == []


@pytest.mark.parametrize("module", sorted(m for m in modules() if layer(m) < 5 and m not in OWN_ENTRY_POINTS))
def test_only_the_command_line_sees_argparse(module):
    tree = ast.parse(modules()[module].read_text())
    used = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    used |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert "argparse" not in used


def test_the_checker_sees_an_upward_import(tmp_path, monkeypatch):
    """The layer rule is not vacuous: a red/ module importing the CLI is found."""
    known = {"faice.red.bad": tmp_path / "bad.py", "faice.cli": tmp_path / "__init__.py"}
    known["faice.red.bad"].write_text("from faice.cli import main\n")
    assert imports("faice.red.bad", known["faice.red.bad"], known) == {"faice.cli"}
    assert layer("faice.cli") > layer("faice.red.bad")


def test_no_module_below_the_cli_reads_argparse_arguments():
    """Only faice/cli/ sees argparse's Namespace; engines and the server get typed options
    (ExecRequest, RunOptions, ServeOptions)."""
    found = [f"{path.relative_to(ROOT.parent)}:{number}"
             for path in sorted(ROOT.rglob("*.py")) if path.relative_to(ROOT).parts[0] != "cli"
             for number, line in enumerate(path.read_text().splitlines(), 1) if "getattr(args" in line]
    assert found == []
