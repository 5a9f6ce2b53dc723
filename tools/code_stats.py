"""Code health figures of the project's Python sources: ``python tools/code_stats.py [ROOT]``.

Prints, over spai/, export/, serving/, spai_cli/ and benchmarks/ (tests and tools left out): function length
(median, p90, max, in lines from ``def`` to its last line), comment lines per 100 lines of code, parameters
annotated with a bare ``Any``, and ``import`` statements inside functions. What issue reviews compare before and
after a refactor; nothing in the package imports it.
"""

from __future__ import annotations

import ast
import io
import json
import statistics
import sys
import tokenize
from pathlib import Path

PACKAGES = ("spai", "export", "serving", "spai_cli", "benchmarks")


def source_files(root: Path) -> list[Path]:
    """Every .py file of the packages under ``root``."""
    return sorted(p for pkg in PACKAGES for p in (root / pkg).rglob("*.py"))


def _comment_and_code_lines(text: str) -> tuple[int, int]:
    comments, code = set(), set()
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type == tokenize.COMMENT:
            comments.add(tok.start[0])
        elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER):
            code.update(range(tok.start[0], tok.end[0] + 1))
    return len(comments), len(code | comments)


def _is_bare_any(annotation: ast.expr | None) -> bool:
    if annotation is None:
        return False
    if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):  # "Any" under future annotations
        return annotation.value.strip() == "Any"
    return isinstance(annotation, ast.Name) and annotation.id == "Any"


def file_stats(path: Path) -> dict[str, list[int] | int]:
    """Function lengths, comment and code lines, bare-Any parameters and in-function imports of one file."""
    text = path.read_text()
    tree = ast.parse(text)
    lengths, any_params, inner_imports = [], 0, 0
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lengths.append(node.end_lineno - node.lineno + 1)
            args = node.args
            params = [*args.posonlyargs, *args.args, *args.kwonlyargs, *(a for a in (args.vararg, args.kwarg) if a)]
            any_params += sum(_is_bare_any(a.annotation) for a in params)
            inner_imports += sum(isinstance(n, (ast.Import, ast.ImportFrom)) for n in ast.walk(node)
                                 if n is not node)
    comments, lines = _comment_and_code_lines(text)
    return {"lengths": lengths, "comments": comments, "lines": lines, "any_params": any_params,
            "inner_imports": inner_imports}


def project_stats(root: Path) -> dict[str, float | int]:
    """The figures over the whole project."""
    lengths: list[int] = []
    totals = {"comments": 0, "lines": 0, "any_params": 0, "inner_imports": 0}
    for path in source_files(root):
        stats = file_stats(path)
        lengths += stats["lengths"]  # type: ignore[arg-type]
        for key in totals:
            totals[key] += stats[key]  # type: ignore[operator]
    lengths.sort()
    return {"files": len(source_files(root)), "functions": len(lengths), "function_lines_median": statistics.median(lengths),
            "function_lines_p90": lengths[int(0.9 * (len(lengths) - 1))], "function_lines_max": lengths[-1],
            "comments_per_100_lines": round(100 * totals["comments"] / max(totals["lines"], 1), 2),
            "lines": totals["lines"], "bare_any_parameters": totals["any_params"],
            "imports_inside_functions": totals["inner_imports"]}


if __name__ == "__main__":
    print(json.dumps(project_stats(Path(sys.argv[1]) if len(sys.argv) > 1 else Path.cwd()), indent=2))
