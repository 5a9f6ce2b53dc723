"""One factory: ``create_model(name_or_cfg, checkpoint=None)``; configs by name, weights by path."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from spai.checkpoint import NATIVE_FORMAT, load_state_dict_strict, read_checkpoint_file, save_checkpoint
from spai.config import Config, get_config, list_config_names
from spai.errors import CheckpointError, ConfigError
from spai.models.spai_model import SPAIModel

__all__ = ["create_model", "list_models", "load_checkpoint", "save_checkpoint", "build_backbone"]


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`."""
    return list_config_names()


def build_backbone(cfg: Config, weights: str | os.PathLike | None = None) -> torch.nn.Module:
    """The frozen backbone named by ``MODEL_WEIGHTS`` (``clip``: open_clip; ``mfm``: upstream's ViT)."""
    kind = cfg.MODEL_WEIGHTS
    layers = list(cfg.MODEL.VIT.INTERMEDIATE_LAYERS)
    if kind == "clip":
        from spai.models.backbone import CLIPBackbone, create_clip_visual, highpass_patch_embedding

        visual = create_clip_visual(cfg.MODEL.VIT.MODEL, weights, quick_gelu=bool(cfg.MODEL.VIT.QUICK_GELU))
        init = str(cfg.MODEL.VIT.INIT).lower()
        if init not in ("random", "highpass"):
            raise ConfigError(f"MODEL.VIT.INIT must be 'random' or 'highpass', got {cfg.MODEL.VIT.INIT!r}.")
        if weights is None and init == "highpass":
            highpass_patch_embedding(visual)
        return CLIPBackbone(visual, layers)
    if kind == "mfm":
        from spai.models.mfm import MFMBackbone

        return MFMBackbone.from_config(cfg, weights)
    raise ConfigError(f"Unknown MODEL_WEIGHTS {kind!r}: use 'clip' (open_clip ViT) or 'mfm' (upstream SPAI's ViT).")


def create_model(name_or_cfg: str | os.PathLike | Mapping[str, Any] | None = None,
                 checkpoint: str | os.PathLike | None = None, *, pretrained: str | os.PathLike | None = None,
                 overrides: Iterable[tuple[str, Any]] = (), device: str | torch.device = "cpu") -> SPAIModel:
    """Build a SPAI model in eval mode.

    Args:
        name_or_cfg: a named config (see :func:`list_models`), a YAML path or a config mapping. May be None when
            ``checkpoint`` is given: the architecture then comes from the checkpoint's own config.
        checkpoint: our checkpoint, upstream's ``spai.pth``, a fusion-fork ``ckpt_epoch_N.pth`` or bare CLIP
            weights (the format is detected).
        pretrained: local file with backbone weights (open_clip / OpenAI CLIP / MFM), else ``PRETRAINED``.
        overrides: ``(dotted_key, value)`` config overrides.
        device: where to put the model.
    """
    if checkpoint is not None:
        model = _model_from_checkpoint(checkpoint, name_or_cfg, overrides)
    else:
        if name_or_cfg is None:
            raise ConfigError("create_model needs a model name, a config or a checkpoint; "
                              f"named models: {', '.join(list_models())}.")
        cfg = get_config(name_or_cfg, overrides)
        model = SPAIModel(cfg, build_backbone(cfg, pretrained or cfg.PRETRAINED or None))
    return model.to(device).eval()


def _model_from_checkpoint(path: str | os.PathLike, name_or_cfg: Any, overrides: Iterable[tuple[str, Any]]
                           ) -> SPAIModel:
    data = read_checkpoint_file(path)
    if data.get("format") != NATIVE_FORMAT:
        from spai.importers import import_foreign_checkpoint

        data = import_foreign_checkpoint(data, Path(path), name_or_cfg)
    _require_model_and_config(data, path)
    cfg = get_config(data["config"], overrides)
    model = SPAIModel(cfg, build_backbone(cfg, None))
    load_state_dict_strict(model, data["model"], str(path))
    return model


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[SPAIModel, dict[str, Any]]:
    """Model and the rest of the checkpoint (epoch, optimizer, lr_scheduler, scaler, metrics, ...)."""
    data = read_checkpoint_file(path)
    if data.get("format") != NATIVE_FORMAT:
        from spai.importers import import_foreign_checkpoint

        data = import_foreign_checkpoint(data, Path(path), None)
    _require_model_and_config(data, path)
    cfg = get_config(data["config"])
    model = SPAIModel(cfg, build_backbone(cfg, None))
    load_state_dict_strict(model, data["model"], str(path))
    state = {k: v for k, v in data.items() if k not in ("model", "config", "format")}
    return model.to(device).eval(), state


def _require_model_and_config(data: dict[str, Any], path: str | os.PathLike) -> None:
    """A native-format dict without its ``model`` / ``config`` entries is a damaged file, not a KeyError."""
    missing = [k for k in ("model", "config") if not isinstance(data.get(k), dict)]
    if missing:
        raise CheckpointError(f"Checkpoint {path} has no {' / '.join(repr(k) for k in missing)} entry (a damaged "
                              "or hand-made file); use a checkpoint written by spai-deploy or a training run.")
