"""The CPU-testable parts of export/trt.py: how TensorRT is detected (a stub-only ``tensorrt`` from tensorrt-stubs
is not TensorRT), the device-buffer pool of the runner, the builder-flag decisions."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _stub_only_tensorrt(tmp_path: Path) -> Path:
    """What ``pip install --no-deps tensorrt-stubs`` puts in site-packages: ``tensorrt/__init__.pyi`` and no
    module; ``import tensorrt`` then succeeds as an empty namespace package."""
    pkg = tmp_path / "site" / "tensorrt"
    pkg.mkdir(parents=True)
    (pkg / "__init__.pyi").write_text("__version__: str = '10.13.0.35'\nclass Builder: ...\n")
    return pkg.parent


def test_stub_only_tensorrt_is_not_tensorrt(tmp_path):
    site = _stub_only_tensorrt(tmp_path)
    code = ("import export.trt as t, spai.errors as e\n"
            "try:\n    t.import_tensorrt()\nexcept e.ExportError as err:\n    print(err)\n"
            "else:\n    raise SystemExit('import_tensorrt accepted a stub-only namespace package')\n"
            "assert not t.tensorrt_importable()\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                       env={"PYTHONPATH": f"{ROOT}:{site}", "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr[-2000:] + r.stdout
    assert "type stubs" in r.stdout
