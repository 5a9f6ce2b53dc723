"""benchmarks/gpu_check.py: the dry run executes the GPU check's code path on the CPU (spai-tiny, tiny sizes) and
writes its JSON / Markdown / plot, the served phase included (a python-torch repository on the bundled
tritonserver, stopped afterwards); every phase runs in a child process under a hard deadline (a phase past it is
killed with what it started, recorded, and the next one runs); the reports are rewritten after every phase; the
plan (one ordered phase table, which docs/benchmarks.md follows) skips ONNX exports nothing reads; a missing
import is named exactly. (No GPU numbers here: no GPU is lent.)"""

from __future__ import annotations

import importlib.util
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.gpu_check import BUDGET_S, PHASES, STALL_MARKER, Facts, plan

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
NAMES = [p.name for p in PHASES]


def test_dry_run_runs_every_phase_on_the_cpu(tmp_path):
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, str(SCRIPT), "-o", str(tmp_path), "--dry-run"], capture_output=True,
                       text=True, timeout=300, cwd=tmp_path)
    elapsed = time.perf_counter() - t0
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"wrote {tmp_path / 'gpu_check.json'}" in r.stdout
    assert re.findall(r"^ +\d+\. (\S+) +deadline <= +\d+ s", r.stdout, re.M) == NAMES  # the plan, printed first
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    phases = result["phases"]
    assert list(phases) == NAMES and result["complete"] and [row["phase"] for row in result["plan"]] == NAMES
    errors = {name: p.get("error") or p.get("stopped") for name, p in phases.items() if "error" in p or "stopped" in p}
    assert not errors, errors
    assert all(p["deadline_s"] > 0 for p in phases.values() if "skipped" not in p)
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
    assert phases["onnxruntime"]["ort-cuda-fp16"]["patches_per_s"] > 0  # the CPU provider stands in for CUDA
    assert "nothing here reads its export" in phases["onnx-fre-fp16"]["skipped"]  # no time spent on it
    assert not (tmp_path / "onnx-fre-fp16").exists()
    md = (tmp_path / "gpu_check.md").read_text()
    assert "## encoder" in md and "| 7 | encoder_compile |" in md and "so far" not in md
    served = phases["served"]
    if importlib.util.find_spec("pytriton") is None:
        assert "pip install nvidia-pytriton" in served["skipped"]
    else:
        assert served["route"]["kind"] == "KIND_CPU" and served["route"]["precision"] == "fp32"
        assert served["in_process"]["patches_per_s"] > 0 and served["levels"]["max_abs_dprob"] < 1e-5
        for level in ("1", "4", "8"):
            assert served["levels"][level]["patches_per_s"] > 0 < served["levels"][level]["served_over_in_process"]
        assert "| 8 | 8 |" in md
        assert not _processes_naming(str(tmp_path / "served" / "repo"))  # the server was stopped
    assert (tmp_path / "gpu_check.png").stat().st_size > 1000
    assert not list(tmp_path.glob(".gpu_check.*"))  # no partial report left
    assert elapsed < 120, f"dry run took {elapsed:.0f} s (budget: 2 minutes)"


def test_a_phase_past_its_deadline_is_stopped_and_the_next_runs(tmp_path):
    """The stalled phase blocks SIGTERM and SIGINT in its process and started a child: both are killed at its
    deadline, the phase is recorded so, and the next phase runs in a fresh process."""
    r = subprocess.run([sys.executable, str(SCRIPT), "-o", str(tmp_path), "--dry-run", "--only", "gemm_peak,aggregator",
                        "--test-stall", "gemm_peak=3"], capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    phases = json.loads((tmp_path / "gpu_check.json").read_text())["phases"]
    assert phases["gemm_peak"]["stopped"] == "stopped at its deadline (3 s)"
    assert 3 <= phases["gemm_peak"]["seconds"] < 20
    assert phases["aggregator"]["eager-fp32"]["ms_per_call"] > 0  # the run went on
    assert phases["served"]["skipped"] == "not selected (--only)"
    assert "gemm_peak: stopped at its deadline (3 s)" in r.stdout
    assert "**stopped**: stopped at its deadline (3 s)" in (tmp_path / "gpu_check.md").read_text()
    assert not _processes_naming(f"{STALL_MARKER}:{tmp_path}")  # what the phase started was killed with it


def test_reports_are_written_after_every_phase_and_sigterm_stops_the_run(tmp_path):
    """While a phase runs, the reports of those before it are on disk (a kill leaves them); SIGTERM ends the run
    at once, with the running phase's process tree, and leaves the reports."""
    log, out = tmp_path / "log.txt", tmp_path / "out"
    with open(log, "w") as f:  # a file, not a pipe nobody reads while the run goes on
        proc = subprocess.Popen([sys.executable, str(SCRIPT), "-o", str(out), "--dry-run", "--only",
                                 "gemm_peak,aggregator", "--test-stall", "aggregator=600"], stdout=f,
                                stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 150
        while not _processes_naming(f"{STALL_MARKER}:{out}") and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()[-3000:]
            time.sleep(0.5)
        result = json.loads((out / "gpu_check.json").read_text())
        assert result["phases"]["gemm_peak"]["fp32"]["tflops"] > 0 and "aggregator" not in result["phases"]
        md = (out / "gpu_check.md").read_text()
        assert "## gemm_peak" in md and "| 6 | aggregator | 600 | not reached | - |" in md and "so far" in md
        assert (out / "gpu_check.png").is_file()
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        assert time.monotonic() - t0 < 15
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not _processes_naming(f"{STALL_MARKER}:{out}")
    result = json.loads((out / "gpu_check.json").read_text())
    assert not result["complete"] and "aggregator" not in result["phases"]


def test_the_plan_follows_the_phase_table_and_skips_exports_nothing_reads():
    lent = Facts(dry_run=False, tensorrt=False, ort_providers=("CPUExecutionProvider",), served="")
    rows = plan(lent)  # a lent H100: no TensorRT, onnxruntime CPU, the bundled tritonserver
    assert [r.phase.name for r in rows] == NAMES
    skipped = {r.phase.name: r.skip for r in rows if r.skip}
    assert set(skipped) == {"onnx", "tensorrt-fp16", "onnxruntime", "onnx-fp32-softmax", "tensorrt-fp32-softmax",
                            "onnx-fre-fp16", "tensorrt-fre-fp16"}
    assert "nothing here reads its export" in skipped["onnx"] and "CUDAExecutionProvider" in skipped["onnx"]
    assert NAMES[:7] == ["environment", "gemm_peak", "served", "autocast_parity", "encoder", "aggregator",
                         "encoder_compile"]  # by value: the served rate before any encoder number
    ort = plan(Facts(False, False, ("CUDAExecutionProvider", "CPUExecutionProvider"), ""))
    assert {r.phase.name for r in ort if r.skip} == {"tensorrt-fp16", "onnx-fp32-softmax", "tensorrt-fp32-softmax",
                                                     "onnx-fre-fp16", "tensorrt-fre-fp16"}
    assert [r.phase.name for r in plan(Facts(False, True, ("CPUExecutionProvider",), "")) if r.skip] == ["onnxruntime"]
    assert all(r.cap_s <= BUDGET_S for r in rows) and 420 <= BUDGET_S <= 480
    stalled = plan(lent, frozenset({"encoder"}), {"encoder": 2.0})
    assert [(r.phase.name, r.cap_s, r.min_s) for r in stalled if not r.skip] == [("environment", 90, 10),
                                                                                  ("encoder", 2.0, 0.0)]


def test_the_docs_list_the_phases_in_the_order_they_run():
    text = (ROOT / "docs" / "benchmarks.md").read_text()
    section = text[text.index("## GPU check"):]
    section = section[:section.index("\n## ", 1)]
    assert re.findall(r"^\| `([\w-]+)` \|", section, re.M) == NAMES


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
