"""Which parameters train: the backbone never; stage 1 only the fusion components; stage 2 everything else."""

from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger(__name__)

FUSION_PREFIX = "mfvit.features_processor."
FUSION_COMPONENTS = ("semantic_proj", "cross_attn_proj", "freq_semantic_encoders", "early_fusion_gates",
                     "adaptive_gate", "cross_attention", "cross_attention_norm", "freq_cross_attention",
                     "freq_attention_norms", "hierarchical_fusion")
BACKBONE_PREFIX = "mfvit.vit."


def is_fusion_param(name: str) -> bool:
    """True for parameters of the fusion components (under ``mfvit.features_processor``)."""
    if not name.startswith(FUSION_PREFIX):
        return False
    return name[len(FUSION_PREFIX):].split(".", 1)[0] in FUSION_COMPONENTS


def trainable_names(model: nn.Module, stage: int) -> list[str]:
    """Names trained in ``stage`` (1 or 2). Stage 1 falls back to all non-backbone parameters when the model has
    no fusion components."""
    candidates = [n for n, _ in model.named_parameters() if not n.startswith(BACKBONE_PREFIX)]
    if stage == 1:
        fusion = [n for n in candidates if is_fusion_param(n)]
        if fusion:
            return fusion
    return candidates


def set_stage(model: nn.Module, stage: int) -> list[str]:
    """Set ``requires_grad`` for ``stage``; returns the trained names and logs what happened."""
    names = set(trainable_names(model, stage))
    for name, param in model.named_parameters():
        param.requires_grad_(name in names)
    count = sum(p.numel() for n, p in model.named_parameters() if n in names)
    if stage == 1 and not any(is_fusion_param(n) for n in names):
        log.info("stage 1: the model has no fusion components; training all non-backbone parameters instead")
    else:
        log.info("stage %d: training %d tensors (%d parameters)%s", stage, len(names), count,
                 " (fusion components only)" if stage == 1 else "")
    return sorted(names)


def stage_for_epoch(epoch: int, fusion_only_epochs: int) -> int:
    """1 while ``epoch < TRAIN.FUSION_ONLY_EPOCHS``, else 2."""
    return 1 if epoch < int(fusion_only_epochs or 0) else 2


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """All non-backbone parameters in two AdamW groups: no weight decay for biases and 1-D tensors."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if name.startswith(BACKBONE_PREFIX):
            continue
        (no_decay if param.ndim <= 1 or name.endswith(".bias") else decay).append(param)
    return [{"params": decay, "weight_decay": float(weight_decay)}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg) -> torch.optim.Optimizer:
    """AdamW over every non-backbone parameter (frozen ones get no gradient and are skipped by AdamW)."""
    opt = cfg.TRAIN.OPTIMIZER
    if str(opt.NAME).lower() != "adamw":
        from spai.errors import ConfigError

        raise ConfigError(f"TRAIN.OPTIMIZER.NAME {opt.NAME!r} is not supported; use 'adamw'.")
    return torch.optim.AdamW(param_groups(model, cfg.TRAIN.WEIGHT_DECAY), lr=float(cfg.TRAIN.BASE_LR),
                             betas=tuple(opt.BETAS), eps=float(opt.EPS))
