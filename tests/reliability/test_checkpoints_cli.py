"""Bad checkpoints through the CLIs: a clear message and exit 1, never a traceback, never executed code.
(The Python API cases live in tests/spai/test_checkpoint.py; these extend them to the command lines.)"""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, assert_clean_failure

import spai


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


@pytest.fixture(scope="module")
def bad_checkpoints(tiny_model, tmp_path_factory) -> dict[str, tuple[Path, str]]:
    """name -> (file, regex of the expected message)."""
    d = tmp_path_factory.mktemp("ckpts")
    good = spai.save_checkpoint(tiny_model, d / "good.pth", epoch=0)
    data = good.read_bytes()
    (d / "truncated.pth").write_bytes(data[: len(data) // 3])
    (d / "empty.pth").write_bytes(b"")
    (d / "text.pth").write_text("this is not a checkpoint\n")
    (d / "image.pth").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    state = torch.load(good, weights_only=True)
    state["model"]["norm.weight"][0] = float("nan")
    torch.save(state, d / "nan.pth")
    torch.save([1, 2, 3], d / "list.pth")
    torch.save({"format": "spai-deploy/1", "weights": {}}, d / "nokeys.pth")
    with open(d / "evil.pth", "wb") as f:
        pickle.dump({"model": _Evil(d / "PWNED")}, f)
    torch.save({"model": {"x": _Evil(d / "PWNED")}}, d / "evil_zip.pth") if False else None
    return {
        "truncated checkpoint": (d / "truncated.pth", "truncated or not a PyTorch checkpoint"),
        "empty checkpoint": (d / "empty.pth", "empty"),
        "text file as checkpoint": (d / "text.pth", "checkpoint"),
        "PNG bytes as checkpoint": (d / "image.pth", "checkpoint"),
        "NaN weights": (d / "nan.pth", "NaN"),
        "pickled list instead of a dict": (d / "list.pth", "checkpoint|dict"),
        "dict without weights": (d / "nokeys.pth", "checkpoint|format|model"),
        "pickle that would execute code": (d / "evil.pth", "checkpoint|unsafe|refus|not allowed|forbidden"),
        "missing checkpoint": (d / "missing.pth", "does not exist"),
    }


CASES = ["truncated checkpoint", "empty checkpoint", "text file as checkpoint", "PNG bytes as checkpoint",
         "NaN weights", "pickled list instead of a dict", "dict without weights", "pickle that would execute code",
         "missing checkpoint"]


@pytest.mark.parametrize("case", CASES)
def test_python_api_refuses(case, bad_checkpoints, record):
    path, match = bad_checkpoints[case]
    with pytest.raises(spai.CheckpointError, match=f"(?i){match}"):
        spai.create_model(checkpoint=path)
    assert not (path.parent / "PWNED").exists()


def test_predict_cli_refuses_every_bad_checkpoint(bad_checkpoints, run_spai, tmp_path, record):
    img = tmp_path / "img.png"
    from PIL import Image

    Image.new("RGB", (64, 64), (1, 2, 3)).save(img)
    for case in CASES:
        path, match = bad_checkpoints[case]
        proc = run_spai("predict", img, "--checkpoint", path)
        assert_clean_failure(proc, 1, match)
        assert not (path.parent / "PWNED").exists(), "the malicious pickle ran"
        msg = (proc.stderr.strip().splitlines() or [""])[-1].replace(str(path.parent) + "/", "")
        record("checkpoints", case, cli="spai predict --checkpoint", exit_code=proc.returncode, message=msg[:220])


@pytest.mark.parametrize("case", ["truncated checkpoint", "NaN weights", "pickle that would execute code",
                                  "missing checkpoint"])
def test_export_to_trt_refuses_bad_checkpoints(case, bad_checkpoints, spai_env, tmp_path, record):
    script = ROOT / "export" / "to_trt.py"
    if not script.is_file():
        pytest.skip("export/to_trt.py not present")
    path, match = bad_checkpoints[case]
    proc = subprocess.run([sys.executable, str(script), str(path), "-o", str(tmp_path / "out"), "--onnx-only"],
                          capture_output=True, text=True, env=spai_env, cwd=ROOT, timeout=300)
    assert_clean_failure(proc, 1, match)
    assert not (path.parent / "PWNED").exists()
    msg = (proc.stderr.strip().splitlines() or [""])[-1].replace(str(path.parent) + "/", "")
    record("checkpoints", f"{case} (export/to_trt.py)", cli="python export/to_trt.py", exit_code=proc.returncode,
           message=msg[:220])
