"""The TensorRT code is type-checked against TensorRT's own API (tensorrt-stubs, TensorRT 10.13) with pyright, as
`make typecheck` (part of `make test`) runs it: the check passes, and a misspelled TensorRT call planted in a copy
of export/trt.py (``set_input_shapes`` for ``set_input_shape``) fails it."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STUBS = ROOT / ".typings" / "tensorrt" / "__init__.pyi"

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("pyright") is None, reason="pyright is not installed (dev extra)"),
    pytest.mark.skipif(shutil.which("node") is None, reason="pyright needs node, which is not on PATH"),
    pytest.mark.skipif(not STUBS.is_file(), reason="no TensorRT stubs in .typings/ (run `make typecheck` once)"),
]


def _pyright(*files: Path) -> dict:
    cmd = [sys.executable, "-m", "pyright", "-p", str(ROOT / "pyrightconfig.json"), "--outputjson", *map(str, files)]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    return json.loads(out.stdout)


def test_tensorrt_code_type_checks_and_a_planted_typo_fails(tmp_path):
    source = (ROOT / "export" / "trt.py").read_text()
    assert source.count("context.set_input_shape(") == 1
    probe = ROOT / "export" / f"_typo_probe_{tmp_path.name}.py"  # inside the project: same imports, same config
    probe.write_text(source.replace("context.set_input_shape(", "context.set_input_shapes("))
    try:
        clean, typo = _pyright(ROOT / "export" / "trt.py"), _pyright(probe)
    finally:
        probe.unlink()
    assert clean["summary"]["errorCount"] == 0, clean["generalDiagnostics"]
    errors = [d for d in typo["generalDiagnostics"] if d["severity"] == "error"]
    assert len(errors) == 1 and "set_input_shapes" in errors[0]["message"], errors
    assert "IExecutionContext" in errors[0]["message"]
