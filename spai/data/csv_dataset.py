"""SPAI's CSV datasets: columns ``image``, ``class`` (1 = AI-generated) and ``split``; paths relative to a root
directory (default: the CSV's parent). Missing files are skipped and counted (``strict`` makes them an error);
files that fail to decode are reported per batch (``errors``) so the caller can count or refuse them."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from spai.errors import DataError, ImageError
from spai.infer.images import decode_image

REQUIRED_COLUMNS = ("image", "class")


@dataclass(frozen=True)
class ImageRecord:
    """One CSV row: resolved path, label and the row as written (for output CSVs)."""

    path: Path
    label: int
    row: dict[str, str]


def _read_rows(csv_path: Path) -> list[dict[str, str]]:
    try:
        with open(csv_path, newline="") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            columns = reader.fieldnames or []
    except OSError as e:
        raise DataError(f"Cannot read CSV {csv_path}: {e.strerror}.") from e
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise DataError(f"CSV {csv_path} lacks column(s) {', '.join(missing)}; SPAI's format is a header "
                        f"'image,class,split' (found: {', '.join(columns) or 'no header'}).")
    return rows


def _label(row: dict[str, str], csv_path: Path, line: int) -> int:
    try:
        label = int(float(row["class"]))
    except (TypeError, ValueError):
        label = -1
    if label not in (0, 1):
        raise DataError(f"{csv_path}:{line}: class must be 0 (real) or 1 (AI-generated), got {row['class']!r}.")
    return label


def read_split_csv(csv_path: str | os.PathLike, split: str | None, root: str | os.PathLike | None = None,
                   strict: bool = False) -> tuple[list[ImageRecord], list[Path]]:
    """Records of ``split`` (None or "all": every row) and the list of missing files that were skipped."""
    csv_path = Path(csv_path)
    root_dir = Path(root) if root is not None else csv_path.parent
    records, missing = [], []
    for line, row in enumerate(_read_rows(csv_path), start=2):
        if split not in (None, "all") and (row.get("split") or "").strip() != split:
            continue
        path = Path(row["image"])
        path = path if path.is_absolute() else root_dir / path
        label = _label(row, csv_path, line)
        if not path.is_file():
            missing.append(path)
            continue
        records.append(ImageRecord(path, label, dict(row)))
    if missing and strict:
        raise DataError(f"{csv_path}: {len(missing)} image(s) of split {split!r} are missing (first: {missing[0]}); "
                        "fix the paths or the root directory, or drop --strict to skip them.")
    return records, missing


class CSVImageDataset(Dataset):
    """Items are ``(image, label, index, error)``: a decoded (and optionally transformed) uint8 tensor, or
    ``None`` plus an error message when the file cannot be decoded. Indices may be ``(epoch, index)`` pairs so
    that augmentation randomness depends only on (seed, epoch, index)."""

    def __init__(self, records: Sequence[ImageRecord], transform: Any = None, seed: int = 0,
                 max_pixels: int | None = None, max_bytes: int | None = None) -> None:
        self.records = list(records)
        self.transform = transform
        self.seed = seed
        self.limits = {k: v for k, v in (("max_pixels", max_pixels), ("max_bytes", max_bytes)) if v}

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor | None, int, int, str]:
        from spai.data.transforms import sample_generator

        epoch, index = key if isinstance(key, tuple) else (0, key)
        record = self.records[index]
        try:
            image = torch.from_numpy(np.ascontiguousarray(decode_image(record.path, **self.limits).transpose(2, 0, 1)))
        except ImageError as e:
            return None, record.label, index, str(e)
        if self.transform is not None:
            image = self.transform(image, sample_generator(self.seed, epoch, index))
        return image, record.label, index, ""

    def labels(self) -> list[int]:
        return [r.label for r in self.records]


def collate_train(batch: list[tuple]) -> dict[str, Any]:
    """Stack decodable items (same size after the train transform); keep the others as errors."""
    good = [b for b in batch if b[0] is not None]
    images = torch.stack([b[0] for b in good]) if good else torch.empty(0, dtype=torch.uint8)
    return {"images": images, "labels": torch.tensor([b[1] for b in good], dtype=torch.float32),
            "indices": [b[2] for b in good], "errors": [(b[2], b[3]) for b in batch if b[0] is None]}


def collate_list(batch: list[tuple]) -> dict[str, Any]:
    """Original-resolution images as a list (validation / test)."""
    good = [b for b in batch if b[0] is not None]
    return {"images": [b[0] for b in good], "labels": torch.tensor([b[1] for b in good], dtype=torch.float32),
            "indices": [b[2] for b in good], "errors": [(b[2], b[3]) for b in batch if b[0] is None]}


class EpochTaggedSampler(torch.utils.data.Sampler):
    """Wraps an index sampler and yields ``(epoch, index)`` pairs (works with persistent workers)."""

    def __init__(self, sampler: Any) -> None:
        self.sampler = sampler
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __iter__(self):
        return ((self.epoch, i) for i in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)
