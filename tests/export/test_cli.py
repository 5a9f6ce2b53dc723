"""The export command (``spai export`` = ``python export/to_trt.py`` = ``python -m export.to_trt``): user errors
exit 1 with nothing half-written; checkpoints from save_checkpoint export. These run the script entry points in
real processes; ``spai export``'s user mistakes run in-process in tests/spai_cli/test_cli_exit_codes.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd or ROOT, capture_output=True, text=True, timeout=900)


def _leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.rglob("*")) if out.exists() else []


def test_to_trt_missing_checkpoint_exits_1_without_output(tmp_path):
    out = tmp_path / "out"
    r = _run(str(ROOT / "export" / "to_trt.py"), str(tmp_path / "nope.pth"), "-o", str(out))
    assert r.returncode == 1 and "does not exist" in r.stderr and "Traceback" not in r.stderr
    assert not any(name.endswith(".onnx") for name in _leftovers(out))


def test_to_trt_unwritable_dir_exits_1(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    os.chmod(locked, 0o500)
    try:  # root ignores permissions: /proc accepts no new directories from anyone
        target = locked / "sub" if not os.access(locked, os.W_OK) else Path("/proc/spai-export-test/sub")
        r = _run("-m", "export.to_trt", "spai-tiny", "-o", str(target))
        assert r.returncode == 1 and "not writable" in r.stderr
    finally:
        os.chmod(locked, 0o700)


def test_saved_checkpoint_exports_with_parity_report_and_trt_exit_code(tmp_path, tiny_model):
    import spai

    ckpt = tmp_path / "ckpt.pth"
    spai.save_checkpoint(tiny_model, ckpt, epoch=1)
    out = tmp_path / "out"
    r = _run(str(ROOT / "export" / "to_trt.py"), str(ckpt), "-o", str(out), "--check-patches", "16",
             cwd=tmp_path)
    from export.trt import tensorrt_available

    assert r.returncode == (0 if tensorrt_available() else 4), r.stderr[-2000:]
    names = _leftovers(out)
    for name in ("patch_encoder.onnx", "patch_encoder.fp16.onnx", "aggregator.onnx", "export_report.json",
                 "export_report.md"):
        assert name in names
    assert not [n for n in names if n.startswith(".")], names  # no temporary files left behind
    assert "PASS" in (out / "export_report.md").read_text()
    evidence = json.loads((out / "route_evidence.json").read_text())  # what --precision auto reads
    from spai.files import sha256_file
    from spai.infer.cpu import cpu_flags, cpu_identity
    from spai.infer.evidence import model_fingerprint

    assert evidence["checkpoint_sha256"] == sha256_file(ckpt)
    assert evidence["weights_sha256"] == model_fingerprint(spai.create_model(checkpoint=ckpt))
    verdict = evidence["cpus"][cpu_identity(cpu_flags())]["verdicts"]["ort-fp32"]
    assert verdict["passed"] and verdict["random_patches"]["max_abs_dprob"] <= 1e-5


def test_onnx_only_exits_0_and_help_works(tmp_path):
    scripted = _run(str(ROOT / "export" / "to_trt.py"), "--help")
    assert scripted.returncode == 0
    assert _run("-m", "spai_cli", "export", "--help").stdout.split("positional")[1] == \
        scripted.stdout.split("positional")[1]  # one set of arguments behind both entry points
    r = _run("-m", "export.to_trt", "spai-tiny", "-o", str(tmp_path / "o"), "--onnx-only", "--check-patches", "8")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "RANDOM weights" in r.stdout
