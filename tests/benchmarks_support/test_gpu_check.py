"""benchmarks/gpu_check.py: the dry run executes the GPU check's code path on the CPU (spai-tiny, tiny sizes) and
writes its JSON / Markdown / plot, the served phase included (a python-torch repository on the bundled
tritonserver, stopped afterwards); a missing import is named exactly. (No GPU numbers here: no GPU is lent.)"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def test_dry_run_runs_every_phase_on_the_cpu(tmp_path):
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, str(SCRIPT), "-o", str(tmp_path), "--dry-run"], capture_output=True,
                       text=True, timeout=300, cwd=tmp_path)
    elapsed = time.perf_counter() - t0
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"wrote {tmp_path / 'gpu_check.json'}" in r.stdout
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    phases = result["phases"]
    errors = {name: p["error"] for name, p in phases.items() if "error" in p}
    assert not errors, errors
    assert result["environment"]["dry_run"] and result["environment"]["model"] == "spai-tiny"
    assert phases["gemm_peak"]["fp32"]["tflops"] > 0
    for name in ("autocast-fp16", "autocast-bf16"):
        assert phases["autocast_parity"][name]["max_abs_dprob"] < 0.05 and phases["autocast_parity"][name]["n_groups"]
    enc = phases["encoder"]
    for mode in ("fp32", "fp16", "bf16"):
        assert enc[mode]["1"]["patches_per_s"] > 0 and "pct_of_peak" in enc[mode]["2"]
    assert "CUDA" in enc["cudagraph-fp16"]["skipped"] and "CUDA" in enc["tf32"]["skipped"]
    assert phases["encoder_compile"]["compile-fp16"]["2"]["patches_per_s"] > 0
    assert phases["aggregator"]["eager-fp32"]["ms_per_call"] > 0
    assert "tensorrt does not import" in phases["tensorrt-fp16"]["skipped"]
    assert phases["onnxruntime"]["ort-cuda-fp16"]["patches_per_s"] > 0
    assert (tmp_path / "onnx-fre-fp16" / "patch_encoder.fp16.onnx").is_file()
    assert "## encoder" in (tmp_path / "gpu_check.md").read_text()
    served = phases["served"]
    if importlib.util.find_spec("pytriton") is None:
        assert "pip install nvidia-pytriton" in served["skipped"]
    else:
        assert served["route"]["kind"] == "KIND_CPU" and served["route"]["precision"] == "fp32"
        assert served["in_process"]["patches_per_s"] > 0 and served["levels"]["max_abs_dprob"] < 1e-5
        for level in ("1", "4", "8"):
            assert served["levels"][level]["patches_per_s"] > 0 < served["levels"][level]["served_over_in_process"]
        assert "| 8 | 8 |" in (tmp_path / "gpu_check.md").read_text()
        assert not _processes_naming(str(tmp_path / "served" / "repo"))  # the server was stopped
    assert (tmp_path / "gpu_check.png").stat().st_size > 1000
    assert elapsed < 120, f"dry run took {elapsed:.0f} s (budget: 2 minutes)"


def _processes_naming(text: str) -> list[int]:
    """Live processes whose command line holds ``text``."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text in cmdline.read_bytes().decode(errors="replace"):
                pids.append(int(cmdline.parent.name))
        except OSError:
            continue
    return pids


BLOCK_FTFY = """
import importlib.abc, runpy, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition('.')[0] == 'ftfy':
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Block())
sys.argv = [sys.argv[1], '-o', sys.argv[2], '--dry-run']
runpy.run_path(sys.argv[0], run_name='__main__')
"""


def test_a_missing_import_is_named_exactly(tmp_path):
    r = subprocess.run([sys.executable, "-c", BLOCK_FTFY, str(SCRIPT), str(tmp_path / "out")], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "`import open_clip` failed (needs `ftfy`): pip install open_clip_torch ftfy" in r.stderr
    assert "`import ftfy` failed" in r.stderr and "docs/benchmarks.md" in r.stderr
    assert not (tmp_path / "out").exists()  # nothing measured, nothing written


BLOCK_PYTRITON = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition('.')[0] == 'pytriton':
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Block())
sys.path.insert(0, sys.argv[1])
from benchmarks.gpu_check import SERVED, missing_imports
print(missing_imports(SERVED))
"""


def test_the_served_phase_names_the_wheel_of_the_bundled_server():
    r = subprocess.run([sys.executable, "-c", BLOCK_PYTRITON, str(ROOT)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "`import pytriton` failed" in r.stdout and "pip install nvidia-pytriton" in r.stdout
    assert "tritonclient" not in r.stdout  # what imports is not named
