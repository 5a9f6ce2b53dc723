"""Training losses: focal or BCE on the logit, plus the fusion fork's two consistency terms."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from spai.errors import ConfigError
from spai.model.config import Config


def focal_loss(logits: torch.Tensor, labels: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Sigmoid focal loss (mean over the batch) of B or B x 1 logits against 0/1 labels."""
    logits, labels = logits.reshape(-1).float(), labels.reshape(-1).float()
    ce = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    p = torch.sigmoid(logits)
    p_t = p * labels + (1 - p) * (1 - labels)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * labels + (1 - alpha) * (1 - labels)) * loss
    return loss.mean()


def bce_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy on the squeezed logit (upstream SPAI)."""
    return F.binary_cross_entropy_with_logits(logits.reshape(-1).float(), labels.reshape(-1).float())


def semantic_consistency(semantic_views: torch.Tensor) -> torch.Tensor:
    """Negative mean of the three pairwise cosine similarities of the views' semantic contexts (3 x N x P)."""
    s = semantic_views.float()
    sims = [F.cosine_similarity(s[i], s[j], dim=-1).mean() for i, j in ((0, 1), (0, 2), (1, 2))]
    return -torch.stack(sims).mean()


def frequency_consistency(view_means: torch.Tensor) -> torch.Tensor:
    """Negative mean cosine similarity of L2-normalised view means (3 x N x P): orig-low and orig-high."""
    v = F.normalize(view_means.float(), dim=-1)
    return -torch.stack([(v[0] * v[1]).sum(-1).mean(), (v[0] * v[2]).sum(-1).mean()]).mean()


def classification_loss(cfg: Config, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``TRAIN.LOSS``: ``focal`` (TRAIN.FOCAL_ALPHA / FOCAL_GAMMA) or ``bce``."""
    name = str(cfg.TRAIN.LOSS).lower()
    if name == "focal":
        return focal_loss(logits, labels, float(cfg.TRAIN.FOCAL_ALPHA), float(cfg.TRAIN.FOCAL_GAMMA))
    if name == "bce":
        return bce_loss(logits, labels)
    raise ConfigError(f"TRAIN.LOSS must be 'focal' or 'bce', got {cfg.TRAIN.LOSS!r}.")


def total_loss(cfg: Config, logits: torch.Tensor, labels: torch.Tensor,
               aux: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
    """classification + w_sem * semantic + w_freq * frequency consistency; terms whose inputs the model did not
    produce (fusion switched off) are 0. Returns the loss and its parts as floats."""
    loss = classification_loss(cfg, logits, labels)
    parts = {"cls": float(loss.detach())}
    w_sem, w_freq = float(cfg.TRAIN.SEMANTIC_CONSISTENCY_WEIGHT), float(cfg.TRAIN.FREQUENCY_CONSISTENCY_WEIGHT)
    if w_sem and "semantic_views" in aux:
        sem = semantic_consistency(aux["semantic_views"])
        loss = loss + w_sem * sem
        parts["sem"] = float(sem.detach())
    if w_freq and "view_means" in aux:
        freq = frequency_consistency(aux["view_means"])
        loss = loss + w_freq * freq
        parts["freq"] = float(freq.detach())
    return loss, parts
