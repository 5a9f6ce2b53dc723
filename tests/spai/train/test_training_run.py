"""End-to-end training on tiny proxy data: checkpoints + metrics, exact resume, NaN stop, one class, spai test."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch

from spai.errors import ConfigError, SPAIError
from spai.model.checkpoint import read_checkpoint_file
from spai.model.config import get_config
from spai.train import trainer as trainer_mod
from spai.train.trainer import TrainOptions, train
from spai_cli import main as cli_main

FAST = [("DATA.BATCH_SIZE", 4), ("DATA.AUGMENTED_VIEWS", 1), ("TRAIN.EPOCHS", 3), ("TRAIN.FUSION_ONLY_EPOCHS", 1),
        ("TRAIN.WARMUP_EPOCHS", 1), ("DATA.NUM_WORKERS", 0)]


def opts(csv_path: Path, output: Path, overrides=(), **kwargs) -> TrainOptions:
    cfg = get_config("spai-tiny", FAST + list(overrides))
    return TrainOptions(cfg=cfg, data_csv=csv_path, output=output, progress=False, tensorboard=False, **kwargs)


@pytest.fixture(scope="module")
def run_dir(proxy_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run")
    train(opts(proxy_csv, out))
    return out


def test_run_writes_checkpoints_and_metrics(run_dir: Path) -> None:
    assert sorted(p.name for p in run_dir.glob("ckpt_epoch_*.pth")) == [f"ckpt_epoch_{i}.pth" for i in range(3)]
    assert (run_dir / "best.pth").is_file()
    history = json.loads((run_dir / "metrics.json").read_text())
    assert [r["epoch"] for r in history] == [0, 1, 2] and [r["stage"] for r in history] == [1, 2, 2]
    assert all(r["val_auc"] is not None and r["train_images"] > 0 for r in history)
    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    assert len(rows) == 3 and "val_ap" in rows[0]
    data = read_checkpoint_file(run_dir / "ckpt_epoch_2.pth")  # weights_only load works
    assert {"optimizer", "lr_scheduler", "scaler", "epoch", "stage", "rng", "metrics"} <= set(data)


def test_resume_reproduces_uninterrupted_run(run_dir: Path, proxy_csv: Path, tmp_path: Path) -> None:
    out = tmp_path / "resumed"
    out.mkdir()
    for name in ("ckpt_epoch_0.pth", "ckpt_epoch_1.pth"):  # as if killed during the last epoch
        shutil.copy(run_dir / name, out / name)
    history = train(opts(proxy_csv, out, resume=True))
    straight = json.loads((run_dir / "metrics.json").read_text())
    keys = ("train_loss", "val_loss", "val_auc", "val_ap", "val_acc", "lr")
    assert [[r[k] for k in keys] for r in history] == [[r[k] for k in keys] for r in straight]
    a = read_checkpoint_file(run_dir / "ckpt_epoch_2.pth")["model"]
    b = read_checkpoint_file(out / "ckpt_epoch_2.pth")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_nan_loss_stops_with_clear_error(proxy_csv: Path, tmp_path: Path, monkeypatch) -> None:
    calls = {"n": 0}
    real = trainer_mod.total_loss

    def poisoned(*args, **kwargs):
        loss, parts = real(*args, **kwargs)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] > 3 else loss), parts  # 3 steps per epoch: dies in epoch 1

    monkeypatch.setattr(trainer_mod, "total_loss", poisoned)
    with pytest.raises(SPAIError, match="NaN/inf at epoch 1") as err:
        train(opts(proxy_csv, tmp_path))
    assert "ckpt_epoch_0.pth" in str(err.value)
    data = read_checkpoint_file(tmp_path / "ckpt_epoch_0.pth")
    assert all(torch.isfinite(v).all() for v in data["model"].values() if v.is_floating_point())
    assert not (tmp_path / "ckpt_epoch_1.pth").exists()


def test_one_class_validation_and_bad_key(proxy_csv: Path, tmp_path: Path) -> None:
    rows = list(csv.DictReader(open(proxy_csv)))
    val = [dict(r, image=str(proxy_csv.parent / r["image"])) for r in rows if r["split"] == "val" and r["class"] == "1"]
    with open(tmp_path / "val.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "class", "split"])
        writer.writeheader()
        writer.writerows(val)
    history = train(opts(proxy_csv, tmp_path / "out", [("TRAIN.EPOCHS", 1)], val_csv=tmp_path / "val.csv"))
    assert history[0]["val_auc"] is None and history[0]["val_acc"] is not None
    with pytest.raises(ConfigError, match="TRAIN.BASE_LR"):
        get_config("spai-tiny", [("TRAIN.BASE_LRR", 1.0)])
    code = cli_main(["train", "--cfg", "spai-tiny", "--data", str(proxy_csv), "--output", str(tmp_path / "x"),
                     "--opt", "TRAIN.BASE_LRR", "1e-3"])
    assert code == 1


def test_spai_test_writes_scores_metrics_roc(run_dir: Path, proxy_csv: Path, tmp_path: Path, capsys) -> None:
    code = cli_main(["test", "--model", str(run_dir), "--csv", str(proxy_csv), "--output", str(tmp_path),
                     "--workers", "0", "--no-progress"])
    assert code == 0
    scores = list(csv.DictReader(open(tmp_path / "data_scores.csv")))
    assert scores and {"image", "class", "split", "probability"} <= set(scores[0]) and {r["split"] for r in scores} == {"test"}
    metrics = json.loads((tmp_path / "data_metrics.json").read_text())
    assert metrics["n"] == len(scores) and 0 <= metrics["auc"] <= 1
    assert (tmp_path / "data_roc.png").stat().st_size > 1000
    assert "AUC" in capsys.readouterr().out
