"""A demo-like trained spai-tiny for the route benchmark's parity and speed figures (``spai demo``'s recipe)."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path


def train_demo_like(out: Path) -> dict[str, Path]:
    """Train spai-tiny as ``spai demo`` does (its proxy data size and epochs) in ``out``: ``{"checkpoint":
    best.pth, "test_dir": the proxy test images with a samples.csv of their labels}``."""
    from spai.data.proxy import make_proxy_dataset
    from spai.model.config import get_config
    from spai.train.trainer import TrainOptions, train
    from spai_cli.demo import DEMO_EPOCHS, DEMO_SOURCES

    data = make_proxy_dataset(out / "proxy", n=DEMO_SOURCES)
    cfg = get_config("spai-tiny", [("TRAIN.EPOCHS", DEMO_EPOCHS)])
    train(TrainOptions(cfg=cfg, data_csv=data, output=out / "train", workers=1, progress=False, tensorboard=False))
    return {"checkpoint": out / "train" / "best.pth", "test_dir": labelled_test_dir(data, out / "test_images")}


def labelled_test_dir(data_csv: Path, target: Path) -> Path:
    """Copy the proxy test split into ``target`` with a ``samples.csv`` (``image,class``) that
    :func:`export.compare.load_images` reads as labels."""
    target.mkdir(parents=True, exist_ok=True)
    rows = []
    with open(data_csv, newline="") as f:
        for row in csv.DictReader(f):
            if row["split"] == "test":
                src = data_csv.parent / row["image"]
                shutil.copyfile(src, target / src.name)
                rows.append({"image": src.name, "class": row["class"]})
    with open(target / "samples.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "class"])
        writer.writeheader()
        writer.writerows(rows)
    return target
