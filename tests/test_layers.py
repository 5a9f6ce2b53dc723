"""Layers you can see: no import cycles (in-function imports count), the library never imports export, serving or
the command line, and the light modules load no torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("spai", "export", "serving", "spai_cli", "benchmarks")  # the layers, bottom first
LIGHT = ("spai", "spai.errors", "spai.inference", "spai.runners", "spai.specs", "spai.images", "spai.patching",
         "serving.client", "serving.bls", "serving.repository", "export.cli")


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            mods[name.removesuffix(".__init__")] = path
    return mods


def _imports(path: Path, known: set[str]) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module, *(f"{node.module}.{a.name}" for a in node.names)] \
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else []
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {m: {n for n in _imports(p, set(mods)) if n != m and not m.startswith(n + ".")} for m, p in mods.items()}


def test_no_import_cycles():
    graph, state, cycles = _graph(), {}, []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, cycles


def test_each_layer_imports_only_the_layers_below_it():
    """spai < export < serving < spai_cli < benchmarks: the library imports none of the others, the command line
    no benchmark, and so on (in-function imports count)."""
    rank = {pkg: i for i, pkg in enumerate(PACKAGES)}
    upward = {m: sorted(n for n in deps if rank[n.split(".")[0]] > rank[m.split(".")[0]])
              for m, deps in _graph().items()}
    assert not {m: d for m, d in upward.items() if d}


def test_light_modules_load_no_torch():
    code = f"import sys; import {', '.join(LIGHT)}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"
