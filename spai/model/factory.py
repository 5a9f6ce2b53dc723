"""One factory: ``create_model(name_or_cfg, checkpoint=None)``; configs by name, weights by path.

``cls`` is the model class to build (:class:`SPAIModel`, or a subclass with the same parameters: ``spai.create_model``
builds :class:`spai.infer.detector.SPAIDetector`, the model with its scoring methods)."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch

from spai.errors import CheckpointError, ConfigError
from spai.model.calibration import Calibration
from spai.model.checkpoint import (
    NATIVE_FORMAT,
    check_finite,
    load_state_dict_strict,
    read_checkpoint_file,
    save_checkpoint,
)
from spai.model.config import Config, get_config, list_config_names
from spai.model.nn.spai_model import SPAIModel

M = TypeVar("M", bound=SPAIModel)

__all__ = ["create_model", "list_models", "load_checkpoint", "save_checkpoint", "build_backbone"]


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`."""
    return list_config_names()


def build_backbone(cfg: Config, weights: str | os.PathLike | None = None) -> torch.nn.Module:
    """The frozen backbone named by ``MODEL_WEIGHTS`` (``clip``: open_clip; ``mfm``: upstream's ViT)."""
    kind = cfg.MODEL_WEIGHTS
    layers = list(cfg.MODEL.VIT.INTERMEDIATE_LAYERS)
    if kind == "clip":
        from spai.model.nn.backbone import CLIPBackbone, create_clip_visual, highpass_patch_embedding

        visual = create_clip_visual(cfg.MODEL.VIT.MODEL, weights, quick_gelu=bool(cfg.MODEL.VIT.QUICK_GELU))
        init = str(cfg.MODEL.VIT.INIT).lower()
        if init not in ("random", "highpass"):
            raise ConfigError(f"MODEL.VIT.INIT must be 'random' or 'highpass', got {cfg.MODEL.VIT.INIT!r}.")
        if weights is None and init == "highpass":
            highpass_patch_embedding(visual)
        return CLIPBackbone(visual, layers)
    if kind == "mfm":
        from spai.model.importers.detect import extract_mfm_backbone
        from spai.model.nn.mfm import MFMBackbone

        model = MFMBackbone.from_config(cfg)
        if weights is not None:  # an MFM pretrain file, upstream spai.pth or ours: unused keys declared
            state = extract_mfm_backbone(read_checkpoint_file(weights), str(weights))
            load_state_dict_strict(model, state, f"MFM backbone weights {weights}")
        return model
    raise ConfigError(f"Unknown MODEL_WEIGHTS {kind!r}: use 'clip' (open_clip ViT) or 'mfm' (upstream SPAI's ViT).")


def create_model(name_or_cfg: str | os.PathLike | Mapping[str, Any] | None = None,
                 checkpoint: str | os.PathLike | None = None, *, pretrained: str | os.PathLike | None = None,
                 overrides: Iterable[tuple[str, Any]] = (), device: str | torch.device = "cpu",
                 cls: type[M] = SPAIModel) -> M:
    """Build a SPAI model in eval mode.

    Args:
        name_or_cfg: a named config (see :func:`list_models`), a YAML path or a config mapping. May be None when
            ``checkpoint`` is given: the architecture then comes from the checkpoint's own config.
        checkpoint: our checkpoint, upstream's ``spai.pth``, a fusion-fork ``ckpt_epoch_N.pth`` or bare CLIP
            weights (the format is detected).
        pretrained: local file with backbone weights (open_clip / OpenAI CLIP / MFM), else ``PRETRAINED``.
        overrides: ``(dotted_key, value)`` config overrides.
        device: where to put the model.
        cls: the class to build (module docstring).
    """
    if checkpoint is not None:
        return load_checkpoint(checkpoint, device, name_or_cfg, overrides, cls=cls)[0]
    if name_or_cfg is None:
        raise ConfigError("create_model needs a model name, a config or a checkpoint; "
                          f"named models: {', '.join(list_models())}.")
    cfg = get_config(name_or_cfg, overrides)
    model = cls(cfg, build_backbone(cfg, pretrained or cfg.PRETRAINED or None))
    return model.to(device).eval()


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu",
                    name_or_cfg: str | os.PathLike | Mapping[str, Any] | None = None,
                    overrides: Iterable[tuple[str, Any]] = (), *, cls: type[M] = SPAIModel
                    ) -> tuple[M, dict[str, Any]]:
    """Model and the rest of the checkpoint (epoch, optimizer, lr_scheduler, scaler, metrics, source_format,
    calibration: also applied as ``model.calibration``).

    Any supported format (see :func:`create_model`); ``name_or_cfg`` names the model of a backbone-only file."""
    data = read_checkpoint_file(path)
    if data.get("format") != NATIVE_FORMAT:
        from spai.model.importers import import_foreign_checkpoint

        data = import_foreign_checkpoint(data, Path(path), name_or_cfg)
    _require_model_and_config(data, path)
    cfg = get_config(data["config"], overrides)
    model = cls(cfg, build_backbone(cfg, None))
    if data.get("backbone_only"):
        _fill_backbone(model, data["model"], str(path), data["backbone_only"])
    else:
        load_state_dict_strict(model, data["model"], str(path))
    model.calibration = Calibration.from_entry(data.get("calibration"))  # probabilities + decisions (spai calibrate)
    state = {k: v for k, v in data.items() if k not in ("model", "config", "format", "backbone_only")}
    return model.to(device).eval(), state


def _fill_backbone(model: SPAIModel, backbone: dict[str, torch.Tensor], source: str, kind: str) -> None:
    """Load backbone-only weights (``mfvit.vit.*``) into ``model``: every backbone tensor, nothing else."""
    full = model.state_dict()
    own = {k for k in full if k.startswith("mfvit.vit.")}
    missing, extra = sorted(own - set(backbone)), sorted(set(backbone) - own)
    bad = sorted(k for k in own & set(backbone) if backbone[k].shape != full[k].shape)
    if missing or extra or bad:
        raise CheckpointError(f"{source}: backbone weights do not fit {model.cfg.MODEL.NAME}: missing {missing[:6]}, "
                              f"unexpected {extra[:6]}, shape mismatch {bad[:6]}. Pick the matching model config.")
    check_finite(backbone, source)
    model.load_state_dict({**full, **backbone}, strict=True)
    warnings.warn(f"{source}: loaded the {kind} backbone only; the SPAI head (projectors, attention, classifier) "
                  "is randomly initialised and its scores mean nothing until it is trained.", stacklevel=4)


def _require_model_and_config(data: dict[str, Any], path: str | os.PathLike) -> None:
    """A native-format dict without its ``model`` / ``config`` entries is a damaged file, not a KeyError."""
    missing = [k for k in ("model", "config") if not isinstance(data.get(k), dict)]
    if missing:
        raise CheckpointError(f"Checkpoint {path} has no {' / '.join(repr(k) for k in missing)} entry (a damaged "
                              "or hand-made file); use a checkpoint written by spai-deploy or a training run.")
