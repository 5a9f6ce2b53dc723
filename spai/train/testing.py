"""``spai test`` library side: score CSV datasets with a checkpoint, write per-image scores, metrics and ROC."""

from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path
from typing import Any

from spai.data.csv_dataset import CSVImageDataset, read_split_csv
from spai.errors import CheckpointError, DataError
from spai.inference import sigmoid
from spai.train.evaluate import evaluate_scores, make_eval_loader, score_loader
from spai.train.metrics import save_roc_curve
from spai.train.state import list_epoch_checkpoints

log = logging.getLogger("spai.train")


def resolve_model_path(model: str | os.PathLike) -> Path:
    """A checkpoint file, or a run directory (its ``best.pth``, else its newest ``ckpt_epoch_N.pth``)."""
    path = Path(model)
    if path.is_dir():
        if (path / "best.pth").is_file():
            return path / "best.pth"
        found = list_epoch_checkpoints(path)
        if not found:
            raise CheckpointError(f"{path} holds no best.pth or ckpt_epoch_N.pth; pass a checkpoint file.")
        return found[0][1]
    if not path.is_file():
        raise CheckpointError(f"--model {path}: no such checkpoint file or run directory.")
    return path


def write_scores(path: Path, dataset: CSVImageDataset, scores: dict[str, Any]) -> None:
    """The CSV's own columns for every scored image, plus ``score`` (probability) and ``logit``."""
    rows = []
    for index, logit in zip(scores["indices"], scores["logits"]):
        row = dict(dataset.records[index].row)
        row.update(score=f"{float(sigmoid(logit)):.6f}", logit=f"{logit:.6f}")
        rows.append(row)
    fields = list(dict.fromkeys([k for r in rows for k in r] or ["image", "class", "split", "score", "logit"]))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def test_csv(model: Any, csv_path: Path, output: Path, name: str, split: str, root: str | None, strict: bool,
             batch_size: int, workers: int, progress: bool) -> dict[str, Any]:
    """Score one CSV's ``split`` rows; writes ``<name>_scores.csv``, ``<name>_metrics.json``, ``<name>_roc.png``."""
    cfg = model.cfg
    records, missing = read_split_csv(csv_path, split, root, strict=strict)
    if not records:
        raise DataError(f"{csv_path}: no usable rows of split {split!r}; pass --split all to use every row.")
    dataset = CSVImageDataset(records, None, max_pixels=cfg.DATA.MAX_IMAGE_PIXELS,
                              max_bytes=cfg.DATA.MAX_IMAGE_BYTES)
    scores = score_loader(model, make_eval_loader(dataset, batch_size, workers, shard=False), progress, name)
    if scores["errors"] and strict:
        raise DataError(f"{csv_path}: {len(scores['errors'])} image(s) could not be decoded "
                        f"(first: {scores['errors'][0][1]}); drop --strict to skip them.")
    for _, message in scores["errors"]:
        log.warning("skipped unreadable image: %s", message)
    metrics = evaluate_scores(cfg, scores)
    metrics.update(csv=str(csv_path), split=split, missing=len(missing))
    write_scores(output / f"{name}_scores.csv", dataset, scores)
    (output / f"{name}_metrics.json").write_text(json.dumps(metrics, indent=2))
    roc = save_roc_curve(scores["labels"], sigmoid(scores["logits"]),
                         output / f"{name}_roc.png", name)
    metrics["roc_png"] = str(roc) if roc else None
    return metrics


def unique_names(paths: list[Path]) -> list[str]:
    """CSV stems, made unique with a numeric suffix."""
    names: list[str] = []
    for p in paths:
        name = p.stem
        while name in names:
            name = f"{p.stem}_{len(names)}"
        names.append(name)
    return names
