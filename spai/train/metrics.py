"""Validation/test metrics (AUC, AP, accuracy@0.5, loss) and their writers: CSV, JSON, TensorBoard, and the PNGs
of ``spai test``: the ROC curve with the operating points marked, and the reliability diagram."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from spai.lazy import lazy_import

matplotlib = lazy_import("matplotlib")
plt = lazy_import("matplotlib.pyplot")
sk_metrics = lazy_import("sklearn.metrics")

METRIC_COLUMNS = ["epoch", "stage", "lr", "train_loss", "val_loss", "val_auc", "val_ap", "val_acc",
                  "train_images", "skipped_images", "epoch_seconds", "images_per_s"]


def binary_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, float | None]:
    """AUC, AP and accuracy at 0.5; AUC is None when only one class is present, AP None without positives."""
    labels, probs = np.asarray(labels).astype(int), np.asarray(probs, dtype=np.float64)
    if len(labels) == 0:
        return {"auc": None, "ap": None, "acc": None, "n": 0, "positives": 0}
    two_classes = len(np.unique(labels)) == 2
    return {"auc": float(sk_metrics.roc_auc_score(labels, probs)) if two_classes else None,
            "ap": float(sk_metrics.average_precision_score(labels, probs)) if labels.sum() > 0 else None,
            "acc": float(sk_metrics.accuracy_score(labels, probs >= 0.5)), "n": int(len(labels)),
            "positives": int(labels.sum())}


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsLog:
    """Epoch rows in ``metrics.csv`` and ``metrics.json`` (rewritten from the full history each time, so a
    resumed run never duplicates rows) plus TensorBoard scalars under ``tensorboard/``."""

    def __init__(self, output: str | os.PathLike, history: list[dict[str, Any]] | None = None,
                 tensorboard: bool = True) -> None:
        self.output = Path(output)
        self.history = list(history or [])
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(self.output / "tensorboard"))
            except ImportError:  # tensorboard is optional ('.[train]')
                self.writer = None

    def add(self, row: dict[str, Any]) -> None:
        """Append one epoch's row and write everything out."""
        row = {k: _plain(v) for k, v in row.items()}
        self.history.append(row)
        with open(self.output / "metrics.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows({k: ("" if r.get(k) is None else r.get(k)) for k in METRIC_COLUMNS}
                             for r in self.history)
        (self.output / "metrics.json").write_text(json.dumps(self.history, indent=2))
        if self.writer is not None:
            for key, value in row.items():
                if key != "epoch" and isinstance(value, (int, float)):
                    self.writer.add_scalar(key.replace("_", "/", 1), value, row["epoch"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _pyplot() -> Any:
    matplotlib.use("Agg")

    return plt


def save_roc_curve(labels: np.ndarray, probs: np.ndarray, path: str | os.PathLike, title: str,
                   points: list[dict[str, Any]] = ()) -> Path | None:
    """ROC curve PNG (matplotlib, Agg) with each operating point (``name``, measured ``fpr`` / ``tpr``) marked;
    None when it is undefined (one class)."""
    if len(np.unique(np.asarray(labels).astype(int))) < 2:
        return None

    plt = _pyplot()
    fpr, tpr, _ = sk_metrics.roc_curve(labels, probs)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot(fpr, tpr, label=f"AUC = {sk_metrics.roc_auc_score(labels, probs):.4f}")
    ax.plot([0, 1], [0, 1], "k--", linewidth=0.8)
    for point in points:
        if point.get("fpr") is not None and point.get("tpr") is not None:
            ax.plot(point["fpr"], point["tpr"], "o", label=f"{point['name']}: FPR {point['fpr']:.3f}, "
                                                        f"TPR {point['tpr']:.3f}")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def save_reliability_diagram(labels: np.ndarray, probs: np.ndarray, path: str | os.PathLike, title: str) -> Path:
    """Reliability diagram PNG: fraction of AI-generated images per probability bin (15 uniform bins, sized by
    their image count) against the diagonal, with the ECE in the legend."""
    from spai.train.calibration import ECE_BINS, expected_calibration_error, reliability_bins

    plt = _pyplot()
    prob_true, prob_pred, counts = reliability_bins(labels, probs, ECE_BINS)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], "k--", linewidth=0.8, label="perfectly calibrated")
    ax.plot(prob_pred, prob_true, "-", color="tab:blue", linewidth=1)
    ax.scatter(prob_pred, prob_true, s=20 + 180 * counts / counts.max(), color="tab:blue", zorder=3,
               label=f"{ECE_BINS} bins (size = images); ECE {expected_calibration_error(labels, probs):.3f}")
    ax.set(xlabel="predicted probability (AI-generated)", ylabel="fraction AI-generated", title=title,
           xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="upper left", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
