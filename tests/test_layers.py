"""Layers you can see: no import cycles (in-function imports count), the library never imports export, serving or
the command line, and the light modules load no torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("spai", "export", "serving", "spai_cli", "benchmarks")  # the layers, bottom first
LIGHT = ("spai", "spai.errors", "spai.infer", "spai.infer.scorer", "spai.infer.runners", "spai.infer.routes",
         "spai.infer.evidence", "spai.infer.cpu", "spai.infer.prepare", "spai.infer.feeds", "spai.infer.scores",
         "spai.infer.parity", "spai.infer.images", "spai.model.specs", "spai.model.patching", "spai.model.calibration",
         "spai.corpus.writers", "serving.client", "serving.bls", "serving.repository", "export.cli")
# Inside the library, bottom first: a package imports only those below it (base: errors, files, lazy).
LIBRARY = ("spai.model", "spai.infer", "spai.corpus", "spai.review")
BASE = ("spai.errors", "spai.files", "spai.lazy")


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


def _package(module: str) -> str | None:
    return next((p for p in LIBRARY if module == p or module.startswith(p + ".")), None)


def test_the_model_knows_nothing_of_deployment_and_library_packages_import_downwards():
    """spai.model (config, specs, checkpoint, factory, the nn.Modules) imports no inference, corpus, review, export
    or serving module (in-function and TYPE_CHECKING imports count); model < infer < corpus < review."""
    graph = _graph()
    model = {m: sorted(d for d in deps if not d.startswith(("spai.model", *BASE)))
             for m, deps in graph.items() if m.startswith("spai.model")}
    assert not {m: d for m, d in model.items() if d}
    rank = {p: i for i, p in enumerate(LIBRARY)}
    upward = {m: sorted(d for d in deps if _package(d) and rank[_package(d)] > rank[_package(m)])
              for m, deps in graph.items() if _package(m)}
    assert not {m: d for m, d in upward.items() if d}


def test_spai_keeps_a_handful_of_modules_and_each_package_says_what_it_owns():
    top = sorted(p.stem for p in (ROOT / "spai").glob("*.py"))
    assert top == ["__init__", "errors", "files", "lazy"]
    for package in [p for p in (ROOT / "spai").iterdir() if p.is_dir() and (p / "__init__.py").exists()]:
        doc = ast.get_docstring(ast.parse((package / "__init__.py").read_text(encoding="utf-8")))
        assert doc and len(doc) > 40, f"{package.name}/__init__.py says nothing of what the package owns"
