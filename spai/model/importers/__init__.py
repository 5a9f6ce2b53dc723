"""Foreign checkpoint formats: upstream SPAI, the fusion fork, bare CLIP and MFM-pretrain weights.

:func:`import_foreign_checkpoint` turns any of them into our native layout ``{"format", "config", "model", ...}``
(the factory then loads it strictly). Every key of the file is either consumed or explicitly declared unused
(upstream's unused ViT tensors, CLIP's text tower, MFM's decoder); anything else is an error listing the keys.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from spai.errors import CheckpointError
from spai.model.checkpoint import NATIVE_FORMAT
from spai.model.config import Config, get_config
from spai.model.importers import configmap
from spai.model.importers.detect import (
    CLIP,
    CLIP_TEXT_PREFIXES,
    MFM_PRETRAIN,
    UPSTREAM,
    detect_format,
    extract_mfm_backbone,
    model_state,
)
from spai.model.nn.mfm import UPSTREAM_UNUSED_PREFIXES, declared_unused

__all__ = ["import_foreign_checkpoint", "detect_format"]
log = logging.getLogger(__name__)


def import_foreign_checkpoint(data: Mapping[str, Any], path: Path, name_or_cfg: Any = None) -> dict[str, Any]:
    """A foreign checkpoint as our native dict: ``config`` (plain dict), ``model`` (our key names), ``format``.

    ``name_or_cfg`` is needed only for backbone-only files (bare CLIP, MFM pretrain): it names the model whose
    backbone they fill; the rest of that model is randomly initialised (a warning says so).
    """
    source = str(path)
    state = model_state(data, source)
    kind = detect_format(state, source)
    if kind in (CLIP, MFM_PRETRAIN):
        cfg, model = _backbone_only(kind, data, state, name_or_cfg, source)
    else:
        cfg, model = (_upstream if kind == UPSTREAM else _fork)(state, data.get("config"), source)
    extra: dict[str, Any] = {"source_format": kind}
    if kind in (CLIP, MFM_PRETRAIN):
        extra["backbone_only"] = kind
    if isinstance(data.get("epoch"), int):
        extra["epoch"] = data["epoch"]
    if isinstance(data.get("max_accuracy"), (int, float)):
        extra["metrics"] = {"max_accuracy": float(data["max_accuracy"])}
    log.info("imported %s as %s", source, kind)
    return {"format": NATIVE_FORMAT, "config": cfg.to_dict(), "model": model, **extra}


def _architecture(state: Mapping[str, torch.Tensor], foreign_cfg: Any, base: str, fork: bool, source: str
                  ) -> Config:
    """The checkpoint's own config mapped onto ours, or (if unreadable) dimensions inferred from shapes."""
    base_cfg = get_config(base)
    if isinstance(foreign_cfg, Mapping) and isinstance(foreign_cfg.get("MODEL"), Mapping):
        return configmap.map_config(foreign_cfg, base_cfg, fork, source)
    infer = configmap.infer_fork if fork else configmap.infer_upstream
    cfg, notes = infer(base_cfg, state)
    log.warning("%s: its config is missing or unreadable (%s); inferred the architecture from tensor shapes. "
                "Assumed: %s.", source, type(foreign_cfg).__name__, "; ".join(notes))
    return cfg


def _upstream(state: dict[str, torch.Tensor], foreign_cfg: Any, source: str) -> tuple[Config, dict]:
    cfg = _architecture(state, foreign_cfg, "spai-mfm-b16", False, source)
    cfg.MODEL_WEIGHTS = "mfm"
    model = {k: v for k, v in state.items()
             if not (k.startswith("mfvit.vit.") and declared_unused(k[len("mfvit.vit."):], UPSTREAM_UNUSED_PREFIXES))}
    return cfg, model


def _fork_unused(key: str, cfg: Config) -> bool:
    """Fork tensors SPAI never uses: CLIP's text tower, and gates of fusion steps that never run."""
    fp, fre = "mfvit.features_processor.", cfg.MODEL.FRE
    if key.startswith("mfvit.vit.clip."):
        return key[len("mfvit.vit.clip."):].startswith(CLIP_TEXT_PREFIXES)
    if not fre.EARLY_FUSION_LAYERS:  # the fork always builds semantic_proj / adaptive_gate
        return key.startswith((fp + "semantic_proj.", fp + "adaptive_gate."))
    return False


def _fork(state: dict[str, torch.Tensor], foreign_cfg: Any, source: str) -> tuple[Config, dict]:
    cfg = _architecture(state, foreign_cfg, "spai-fusion-b16", True, source)
    visual = {k[len("mfvit.vit.clip."):]: v for k, v in state.items() if k.startswith("mfvit.vit.clip.visual.")}
    from spai.model.importers.clipnames import clip_model_name

    cfg.MODEL.VIT.MODEL = clip_model_name(visual)[0]
    cfg.MODEL_WEIGHTS = "clip"
    cfg.MODEL.VIT.QUICK_GELU = True  # the fork's backbone is OpenAI's `clip` package model
    fre = cfg.MODEL.FRE
    fre.USE_CROSS_ATTENTION = True  # always built and run by the fork
    fre.EXTENDED_STATISTICS = True  # the fork always computes 12 moments per layer
    fre.FORK_SECOND_PROJECTION = bool(fre.USE_HIERARCHICAL_FUSION)
    if fre.FORK_SECOND_PROJECTION and cfg.MODEL.VIT.PROJECTION_DIM != cfg.MODEL.VIT.EMBED_DIM:
        raise CheckpointError(f"{source}: hierarchical fusion with PROJECTION_DIM {cfg.MODEL.VIT.PROJECTION_DIM} != "
                              f"EMBED_DIM {cfg.MODEL.VIT.EMBED_DIM}: the fork itself cannot run this checkpoint.")
    return cfg, {k: v for k, v in state.items() if not _fork_unused(k, cfg)}


def _backbone_only(kind: str, data: Mapping[str, Any], state: dict[str, torch.Tensor], name_or_cfg: Any,
                   source: str) -> tuple[Config, dict]:
    """The named model's config and the file's backbone weights under our ``mfvit.vit.*`` names; the factory
    fills them into that model (everything else stays random: ``backbone_only`` in the result says so)."""
    if name_or_cfg is None:
        example = "spai-fusion-b16" if kind == CLIP else "spai-mfm-b16"
        raise CheckpointError(f"{source} holds only backbone weights ({kind}); say which model they belong to: "
                              f"create_model('{example}', checkpoint=...) or `spai convert --model {example}`.")
    cfg = get_config(name_or_cfg)
    want = "clip" if kind == CLIP else "mfm"
    if cfg.MODEL_WEIGHTS != want:
        raise CheckpointError(f"{source} holds {kind} backbone weights but the model config uses MODEL_WEIGHTS "
                              f"{cfg.MODEL_WEIGHTS!r}; pick a config with MODEL_WEIGHTS {want!r}.")
    backbone = _clip_backbone(state, source) if kind == CLIP else extract_mfm_backbone(data, source)
    return cfg, {"mfvit.vit." + k: v for k, v in backbone.items()}


def _clip_backbone(state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """``visual.*`` tensors under our ``clip.visual.*`` names; the text tower is declared unused."""
    other = sorted(k for k in state if not k.startswith("visual.") and not k.startswith(CLIP_TEXT_PREFIXES))
    if other:
        raise CheckpointError(f"{source}: CLIP weights with unexpected keys {other[:8]}; expected visual.* and "
                              "the text tower only.")
    return {"clip." + k: v for k, v in state.items() if k.startswith("visual.")}

