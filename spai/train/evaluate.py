"""Scoring CSV datasets at original resolution (validation during training and ``spai test``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from spai.data.csv_dataset import CSVImageDataset, collate_list
from spai.infer.runners import Route
from spai.infer.scorer import Scorer
from spai.lazy import lazy_import
from spai.model.calibration import UNCALIBRATED, Calibration
from spai.model.nn.spai_model import SPAIModel
from spai.train import distributed as dist_utils

dist = lazy_import("torch.distributed")
tqdm_module = lazy_import("tqdm")


def make_eval_loader(dataset: CSVImageDataset, batch_size: int, workers: int, shard: bool = True) -> DataLoader:
    """Original-resolution list batches; under DDP each rank gets every world_size-th image."""
    if shard and dist_utils.is_distributed():
        dataset = Subset(dataset, list(range(dist.get_rank(), len(dataset), dist.get_world_size())))
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                      collate_fn=collate_list, persistent_workers=False,
                      generator=torch.Generator().manual_seed(0))  # never draws from the global RNG


@torch.no_grad()
def score_loader(model: SPAIModel, loader: DataLoader, progress: bool = False, desc: str = "eval",
                 route: Route | None = None) -> dict[str, Any]:
    """Logits of every decodable image (gathered over ranks, ordered by dataset index) plus decode errors;
    scored by ``model`` itself, or through :mod:`spai.infer.scorer` on another entered ``route`` (ONNX Runtime,
    bf16, int8)."""
    scorer = None if route is None else Scorer.for_route(route, spec=model.patch_spec)

    was_training = model.training
    model.eval()
    indices, labels, logits, errors = [], [], [], []
    for batch in tqdm_module.tqdm(loader, desc=desc, disable=not progress, unit="batch", leave=False):
        errors.extend(batch["errors"])
        if not batch["images"]:
            continue
        results = model.score_images(batch["images"]) if scorer is None else scorer.score_images(batch["images"])
        for res in results:
            logits.append(res.logit)
        indices.extend(batch["indices"])
        labels.extend(batch["labels"].tolist())
    model.train(was_training)
    parts = dist_utils.all_gather_objects((indices, labels, logits, errors))
    merged = sorted((i, y, z) for part in parts for i, y, z in zip(part[0], part[1], part[2]))
    return {"indices": [m[0] for m in merged], "labels": np.array([m[1] for m in merged], dtype=np.int64),
            "logits": np.array([m[2] for m in merged], dtype=np.float64),
            "errors": sorted(e for part in parts for e in part[3])}


def evaluate_scores(cfg: Any, scores: dict[str, Any], calibration: Calibration = UNCALIBRATED) -> dict[str, Any]:
    """AUC / AP / accuracy at probability 0.5 (the ``calibration``'s probability) / loss (TRAIN.LOSS on the raw
    logits) of :func:`score_loader`'s output."""
    from spai.train.losses import classification_loss
    from spai.train.metrics import binary_metrics

    logits, labels = scores["logits"], scores["labels"]
    probs = calibration.probability(logits).astype(np.float64) if len(logits) else logits
    metrics = binary_metrics(labels, probs)
    loss = classification_loss(cfg, torch.from_numpy(logits), torch.from_numpy(labels)) if len(logits) else None
    metrics["loss"] = float(loss) if loss is not None else None
    metrics["errors"] = len(scores["errors"])
    return metrics
