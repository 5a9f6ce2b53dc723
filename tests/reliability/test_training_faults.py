"""Training faults on spai-tiny + a tiny proxy dataset: kill -9 during an epoch and during a checkpoint write,
then ``--resume``; an injected write failure (ENOSPC). Never a corrupt checkpoint; the previous one stays."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import ROOT, assert_clean_failure

HERE = Path(__file__).resolve().parent

EPOCHS = "2"


@pytest.fixture(scope="module")
def proxy_csv(tmp_path_factory, spai_env) -> Path:
    out = tmp_path_factory.mktemp("proxy")
    proc = subprocess.run([sys.executable, "-m", "spai_cli", "data", "proxy", "--output", str(out), "--n", "8"],
                          capture_output=True, text=True, env=spai_env, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return out / "data.csv"


def train(proxy_csv: Path, output: Path, env: dict, *, resume: bool = False, fault: str | None = None,
          wait: bool = True):
    cmd = [sys.executable, str(HERE / "train_driver.py"), "train", "--cfg", "spai-tiny", "--data", str(proxy_csv),
           "--output", str(output), "--epochs", EPOCHS, "--batch-size", "4", "--workers", "0", "--no-progress"]
    if resume:
        cmd.append("--resume")
    env = dict(env)
    if fault:
        env["SPAI_TEST_FAULT"] = fault
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    if not wait:
        return proc
    out, err = proc.communicate(timeout=900)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def epoch_files(output: Path) -> dict[int, Path]:
    return {int(p.stem.split("_")[-1]): p for p in output.glob("ckpt_epoch_*.pth")}


def assert_all_checkpoints_load(output: Path) -> dict[int, int]:
    from spai.model.checkpoint import read_checkpoint_file

    epochs = {}
    for n, p in epoch_files(output).items():
        data = read_checkpoint_file(p)  # raises CheckpointError on a corrupt file
        assert int(data["epoch"]) == n
        epochs[n] = p.stat().st_size
    return epochs


def resume_and_check(proxy_csv, output, env, expect_from: int) -> str:
    proc = train(proxy_csv, output, env, resume=True)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Traceback" not in text, text[-3000:]
    assert f"continuing at epoch {expect_from}" in text, text[-3000:]
    assert set(epoch_files(output)) == set(range(int(EPOCHS)))
    assert_all_checkpoints_load(output)
    line = next(line for line in text.splitlines() if "resumed from" in line).split("INFO ")[-1]
    return line.replace(str(output) + "/", "")


@pytest.mark.slow
def test_kill_during_an_epoch_then_resume(proxy_csv, tmp_path, spai_env, record):
    out = tmp_path / "run"
    proc = train(proxy_csv, out, spai_env, wait=False)
    deadline = time.monotonic() + 600
    while 0 not in epoch_files(out) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert 0 in epoch_files(out), "epoch 0 checkpoint never appeared"
    time.sleep(1.0)  # inside epoch 1
    assert proc.poll() is None, "training finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    assert set(assert_all_checkpoints_load(out)) == {0}
    line = resume_and_check(proxy_csv, out, spai_env, 1)
    record("faults", "kill -9 during epoch 1, then --resume", result=f"no corrupt file; {line}; finished epoch 1")


@pytest.mark.slow
def test_kill_during_a_checkpoint_write_then_resume(proxy_csv, tmp_path, spai_env, record):
    out = tmp_path / "run"
    proc = train(proxy_csv, out, spai_env, fault="kill:2")  # SIGKILL half-way through writing ckpt_epoch_1
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert set(assert_all_checkpoints_load(out)) == {0}  # ckpt_epoch_1.pth never appeared half-written
    leftovers = [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    line = resume_and_check(proxy_csv, out, spai_env, 1)
    record("faults", "kill -9 half-way through writing ckpt_epoch_1.pth, then --resume",
           result=f"ckpt_epoch_1.pth absent (not corrupt), ckpt_epoch_0 intact; {line}; "
                  f"hidden temp files left by the killed write: {len(leftovers)}")


def test_failed_checkpoint_write_is_reported_and_previous_kept(proxy_csv, tmp_path, spai_env, record):
    out = tmp_path / "run"
    proc = train(proxy_csv, out, spai_env, fault="oserror:2")  # ENOSPC while writing ckpt_epoch_1
    assert_clean_failure(proc, 1, r"Failed to write checkpoint .*ckpt_epoch_1\.pth.*No space left.*previous")
    assert set(assert_all_checkpoints_load(out)) == {0}
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")], "temp file left behind"
    msg = proc.stderr.strip().splitlines()[-1].replace(str(out) + "/", "")
    record("faults", "checkpoint write fails with ENOSPC (injected OSError)",
           result=f"exit 1, '{msg[:200]}'; ckpt_epoch_0 intact, no temp file left")
    line = resume_and_check(proxy_csv, out, spai_env, 1)
    record("faults", "--resume after the failed write", result=line)
