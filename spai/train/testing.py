"""``spai test`` and ``spai calibrate``, library side: score labelled CSV datasets with a checkpoint; write
per-image scores, metrics (operating points, TPR at a fixed FPR, calibration error) and plots, or fit the
checkpoint's calibration entry."""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from spai.data.csv_dataset import CSVImageDataset, read_split_csv
from spai.errors import CheckpointError, DataError
from spai.files import sha256_file
from spai.infer.runners import Route
from spai.model.calibration import Calibration
from spai.train.calibration import calibration_from_scores, detection_metrics
from spai.train.evaluate import evaluate_scores, make_eval_loader, score_loader
from spai.train.metrics import save_reliability_diagram, save_roc_curve
from spai.train.state import list_epoch_checkpoints

log = logging.getLogger(__name__)


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


def write_scores(path: Path, dataset: CSVImageDataset, scores: dict[str, Any], calibration: Calibration) -> None:
    """The CSV's own columns for every scored image, plus ``probability`` (calibrated when the model
    is; the column every scorer writes), ``logit``, ``decision`` (1 = flagged at the default operating point) and ``operating_point``."""
    point = calibration.operating_point()
    probs = calibration.probability(scores["logits"]) if len(scores["logits"]) else []
    rows = []
    for index, logit, prob in zip(scores["indices"], scores["logits"], probs):
        row = dict(dataset.records[index].row)
        row.update(probability=f"{float(prob):.6f}", logit=f"{logit:.6f}", decision=int(point.decide(prob)),
                   operating_point=point.name)
        rows.append(row)
    fields = list(dict.fromkeys([k for r in rows for k in r] or ["image", "class", "split", "probability",
                                                                  "logit", "decision", "operating_point"]))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def labelled_scores(model: Any, csv_path: Path, split: str, root: str | None, strict: bool, batch_size: int,
                    workers: int, progress: bool, desc: str, route: Route | None = None
                    ) -> tuple[CSVImageDataset, dict[str, Any], int]:
    """(dataset, :func:`score_loader` output, missing files) of one CSV's ``split`` rows, scored at original
    resolution (by the model, or through another entered ``route``); undecodable images are skipped with a
    warning (an error with ``strict``)."""
    cfg = model.cfg
    records, missing = read_split_csv(csv_path, split, root, strict=strict)
    if not records:
        raise DataError(f"{csv_path}: no usable rows of split {split!r}; pass --split all to use every row.")
    dataset = CSVImageDataset(records, None, max_pixels=cfg.DATA.MAX_IMAGE_PIXELS,
                              max_bytes=cfg.DATA.MAX_IMAGE_BYTES)
    scores = score_loader(model, make_eval_loader(dataset, batch_size, workers, shard=False), progress, desc,
                          route)
    if scores["errors"] and strict:
        raise DataError(f"{csv_path}: {len(scores['errors'])} image(s) could not be decoded "
                        f"(first: {scores['errors'][0][1]}); drop --strict to skip them.")
    for _, message in scores["errors"]:
        log.warning("skipped unreadable image: %s", message)
    return dataset, scores, len(missing)


def calibration_entry(scores: dict[str, Any], csv_path: str | os.PathLike, split: str, method: str,
                      fprs: Sequence[float]) -> dict[str, Any]:
    """The checkpoint's ``calibration`` entry fitted on labelled scores of ``csv_path``'s ``split`` rows (with
    the CSV's path and SHA-256)."""
    return calibration_from_scores(scores["logits"], scores["labels"], method=method, fprs=fprs,
                                   csv=str(csv_path), csv_sha256=sha256_file(csv_path), split=split,
                                   n_images=int(len(scores["labels"])))


def test_csv(model: Any, csv_path: Path, output: Path, name: str, split: str, root: str | None, strict: bool,
             batch_size: int, workers: int, progress: bool, route: Route | None = None
             ) -> dict[str, Any]:
    """Score one CSV's ``split`` rows (by the model, or through ``route``); writes ``<name>_scores.csv``,
    ``<name>_metrics.json``, ``<name>_roc.png`` (operating points marked) and ``<name>_reliability.png``."""
    dataset, scores, missing = labelled_scores(model, csv_path, split, root, strict, batch_size, workers,
                                               progress, name, route)
    calibration = model.calibration
    metrics = evaluate_scores(model.cfg, scores, calibration)
    metrics.update(csv=str(csv_path), split=split, missing=missing, calibrated=calibration.calibrated,
                   calibration_method=calibration.method)
    probs = calibration.probability(scores["logits"]) if len(scores["logits"]) else np.zeros(0, np.float32)
    if len(probs):
        metrics.update(detection_metrics(scores["labels"], probs, calibration))
    write_scores(output / f"{name}_scores.csv", dataset, scores, calibration)
    roc = save_roc_curve(scores["labels"], probs, output / f"{name}_roc.png", name,
                         metrics.get("operating_points", []))
    metrics["roc_png"] = str(roc) if roc else None
    metrics["reliability_png"] = str(save_reliability_diagram(scores["labels"], probs, output /
                                                              f"{name}_reliability.png", name)) if len(probs) else None
    (output / f"{name}_metrics.json").write_text(json.dumps(metrics, indent=2))
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
