"""The house's rules, read from the source: arrows point down (STYLE.md).

- nothing outside ``cli/`` imports the command line;
- ``data/`` imports nothing above it (no model, task, extraction, recognition or interop code);
- ``models/`` and ``losses/`` import nothing from ``tasks/`` or ``data/``;
- no import circle between modules at import time (a module's top-level imports).

Imports are read with :mod:`ast`, function-level ones included for the first three rules.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "audio_ssl"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, top_level_only: bool) -> set[str]:
    """The audio_ssl modules ``path`` imports (``from a.b import c`` counts ``a.b`` and, where
    ``a.b.c`` is a module, that too)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else ast.walk(tree)
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("audio_ssl"))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and \
                node.module.startswith("audio_ssl"):
            found.add(node.module)
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                if _path_of(sub) is not None:
                    found.add(sub)
    return found


def _path_of(module: str) -> Path | None:
    base = PACKAGE.parent.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _in(module: str, package: str) -> bool:
    return module == f"audio_ssl.{package}" or module.startswith(f"audio_ssl.{package}.")


def test_nothing_outside_cli_imports_the_command_line():
    bad = {m: sorted(i for i in _imports(p, False) if _in(i, "cli"))
           for m, p in MODULES.items() if not _in(m, "cli")}
    assert not {m: i for m, i in bad.items() if i}


@pytest.mark.parametrize("package, forbidden", [
    ("data", ("models", "losses", "tasks", "extract", "asr", "probe", "interop", "cli", "demo",
              "corpora", "plot")),
    ("models", ("tasks", "data", "extract", "asr", "probe", "cli", "demo")),
    ("losses", ("tasks", "data", "extract", "asr", "probe", "cli", "demo")),
])
def test_arrows_point_down(package, forbidden):
    bad = {}
    for m, p in MODULES.items():
        if _in(m, package):
            above = sorted(i for i in _imports(p, False) if any(_in(i, f) for f in forbidden))
            if above:
                bad[m] = above
    assert not bad, f"{package}/ imports from above it: {bad}"


def test_no_import_circle_at_import_time():
    graph = {m: {i for i in _imports(p, True) if i in MODULES and i != m}
             for m, p in MODULES.items()}
    # a package's __init__ importing its own submodules is how packages expose them; a
    # submodule importing its package's __init__ back is then a circle, and is reported
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state and (cycle := visit(n)):
                return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            cycle = visit(m)
            assert cycle is None, " -> ".join(cycle)
