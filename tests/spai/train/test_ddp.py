"""Two CPU processes on gloo under torchrun: DDP training writes one set of checkpoints and metrics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[3]


def test_ddp_two_processes_gloo(proxy_csv: Path, tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           "-m", "spai_cli", "train", "--cfg", "spai-tiny", "--data", str(proxy_csv), "--output", str(tmp_path),
           "--no-progress", "--workers", "0", "--epochs", "2", "--opt", "DATA.BATCH_SIZE", "2",
           "--opt", "DATA.AUGMENTED_VIEWS", "1", "--opt", "TRAIN.FUSION_ONLY_EPOCHS", "1"]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    history = json.loads((tmp_path / "metrics.json").read_text())
    assert [r["stage"] for r in history] == [1, 2]
    assert history[-1]["train_images"] == 12  # 2 ranks x 3 steps x 2 images (14 images, drop_last)
    assert (tmp_path / "ckpt_epoch_1.pth").is_file() and (tmp_path / "best.pth").is_file()
