"""CSV loading (missing / unreadable files), training transforms and the proxy dataset."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from spai.data.csv_dataset import CSVImageDataset, collate_train, read_split_csv
from spai.data.proxy import make_proxy_dataset
from spai.data.transforms import TrainTransform, rotated_inner_size, sample_generator
from spai.errors import DataError
from spai.model.config import get_config


def _write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "class", "split"])
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture()
def small_csv(tmp_path: Path) -> Path:
    for i in range(3):
        Image.fromarray(np.full((40, 60, 3), 40 * i, np.uint8)).save(tmp_path / f"im{i}.png")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    rows = [{"image": f"im{i}.png", "class": i % 2, "split": "train"} for i in range(3)]
    rows += [{"image": "gone.png", "class": 1, "split": "train"}, {"image": "broken.png", "class": 0, "split": "train"},
             {"image": "im0.png", "class": 0, "split": "val"}]
    return _write_csv(tmp_path / "data.csv", rows)


def test_split_and_missing_files(small_csv: Path) -> None:
    records, missing = read_split_csv(small_csv, "train")
    assert [r.path.name for r in records] == ["im0.png", "im1.png", "im2.png", "broken.png"]
    assert [r.label for r in records] == [0, 1, 0, 0]
    assert [p.name for p in missing] == ["gone.png"]
    assert len(read_split_csv(small_csv, "val")[0]) == 1
    with pytest.raises(DataError, match="missing"):
        read_split_csv(small_csv, "train", strict=True)


def test_unreadable_image_is_reported_not_raised(small_csv: Path) -> None:
    records, _ = read_split_csv(small_csv, "train")
    batch = collate_train([CSVImageDataset(records)[i] for i in (0, 3)])
    assert batch["images"].shape == (1, 3, 40, 60) and len(batch["errors"]) == 1
    assert "broken.png" in batch["errors"][0][1]


def test_bad_csv_header_and_label(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("path,label\nx.png,1\n")
    with pytest.raises(DataError, match="lacks column"):
        read_split_csv(tmp_path / "a.csv", "train")
    _write_csv(tmp_path / "b.csv", [{"image": "x.png", "class": "fake", "split": "train"}])
    with pytest.raises(DataError, match="class must be 0"):
        read_split_csv(tmp_path / "b.csv", "train")


def test_train_transform_shapes_and_determinism() -> None:
    cfg = get_config("spai-tiny", [("DATA.AUGMENTED_VIEWS", 3)])
    transform = TrainTransform(cfg)
    image = torch.randint(0, 256, (3, 300, 260), dtype=torch.uint8)
    a = transform(image, sample_generator(0, 1, 5))
    b = transform(image, sample_generator(0, 1, 5))
    c = transform(image, sample_generator(0, 2, 5))
    assert a.shape == (3, 224, 3 * 224) and a.dtype == torch.uint8
    assert torch.equal(a, b) and not torch.equal(a, c)
    small = transform(torch.randint(0, 256, (3, 100, 90), dtype=torch.uint8), sample_generator(0, 0, 0))
    assert small.shape == (3, 224, 672)


def test_rotated_inner_size() -> None:
    assert rotated_inner_size(100, 100, 0) == (100, 100)
    h, w = rotated_inner_size(100, 100, 45)
    assert 69 <= h <= 71 and 69 <= w <= 71


def test_proxy_is_deterministic_and_split_by_source(tmp_path: Path) -> None:
    a = make_proxy_dataset(tmp_path / "a", n=8, seed=3)
    b = make_proxy_dataset(tmp_path / "b", n=8, seed=3)
    assert a.read_text() == b.read_text()
    name = "images/src00002_fake.png"
    assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    rows = list(csv.DictReader(open(a)))
    splits_by_source: dict[str, set] = {}
    for r in rows:
        splits_by_source.setdefault(r["image"].split("_")[0], set()).add(r["split"])
    assert all(len(s) == 1 for s in splits_by_source.values())
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    assert {r["class"] for r in rows} == {"0", "1"}
    assert max(Image.open(tmp_path / "a" / r["image"]).size[0] for r in rows) > 224
