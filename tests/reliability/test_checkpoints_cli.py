"""Bad checkpoints through the Python API and one real process: a clear message and exit 1, never a traceback,
never executed code. (The command-line cases run in-process in tests/spai_cli/test_cli_exit_codes.py.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT, assert_clean_failure, write_bad_checkpoints

import spai


@pytest.fixture(scope="module")
def bad_checkpoints(tiny_model, tmp_path_factory) -> dict[str, tuple[Path, str]]:
    return write_bad_checkpoints(tiny_model, tmp_path_factory.mktemp("ckpts"))


CASES = ["truncated checkpoint", "empty checkpoint", "text file as checkpoint", "PNG bytes as checkpoint",
         "NaN weights", "pickled list instead of a dict", "dict without weights", "pickle that would execute code",
         "missing checkpoint"]


@pytest.mark.parametrize("case", CASES)
def test_python_api_refuses(case, bad_checkpoints, record):
    path, match = bad_checkpoints[case]
    with pytest.raises(spai.CheckpointError, match=f"(?i){match}"):
        spai.create_model(checkpoint=path)
    assert not (path.parent / "PWNED").exists()


def test_export_to_trt_script_refuses_the_malicious_pickle(bad_checkpoints, spai_env, tmp_path, record):
    """One real process through the script entry point (the other cases and commands run in-process:
    tests/spai_cli/test_cli_exit_codes.py): exit 1, a message, and the payload never ran."""
    script = ROOT / "export" / "to_trt.py"
    case = "pickle that would execute code"
    path, match = bad_checkpoints[case]
    proc = subprocess.run([sys.executable, str(script), str(path), "-o", str(tmp_path / "out"), "--onnx-only"],
                          capture_output=True, text=True, env=spai_env, cwd=ROOT, timeout=300)
    assert_clean_failure(proc, 1, match)
    assert not (path.parent / "PWNED").exists()
    msg = (proc.stderr.strip().splitlines() or [""])[-1].replace(str(path.parent) + "/", "")
    record("checkpoints", f"{case} (export/to_trt.py)", cli="python export/to_trt.py", exit_code=proc.returncode,
           message=msg[:220])
