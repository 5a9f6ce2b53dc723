"""Architecture of a foreign checkpoint: its pickled yacs config mapped onto our keys, or inferred from shapes."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from typing import Any

import torch

from spai.errors import CheckpointError
from spai.model.config import Config
from spai.model.nn.spectral import circular_mask

log = logging.getLogger(__name__)

# (key in the foreign config, our key); both dotted. Same names upstream and in the fork except IMG_SIZE.
SHARED_KEYS: list[tuple[str, str]] = [(k, k) for k in (
    "MODEL.VIT.EMBED_DIM", "MODEL.VIT.DEPTH", "MODEL.VIT.NUM_HEADS", "MODEL.VIT.MLP_RATIO", "MODEL.VIT.PATCH_SIZE",
    "MODEL.VIT.INTERMEDIATE_LAYERS", "MODEL.VIT.PROJECTION_DIM", "MODEL.VIT.PROJECTION_LAYERS",
    "MODEL.FRE.MASKING_RADIUS", "MODEL.FRE.PROJECTOR_LAST_LAYER_ACTIVATION_TYPE",
    "MODEL.FRE.ORIGINAL_IMAGE_FEATURES_BRANCH", "MODEL.FRE.DISABLE_RECONSTRUCTION_SIMILARITY",
    "MODEL.PATCH_VIT.PATCH_STRIDE", "MODEL.PATCH_VIT.NUM_HEADS", "MODEL.PATCH_VIT.ATTN_EMBED_DIM",
    "MODEL.PATCH_VIT.MINIMUM_PATCHES", "MODEL.CLS_HEAD.MLP_RATIO", "MODEL.SID_DROPOUT",
    "MODEL.FEATURE_EXTRACTION_BATCH")] + [("DATA.IMG_SIZE", "MODEL.VIT.IMG_SIZE")]
FORK_KEYS = ["MODEL.FRE.SEMANTIC_DIM", "MODEL.FRE.NUM_HEADS", "MODEL.FRE.EARLY_FUSION_LAYERS"]
# The fork reads these with getattr(..., default): absent keys take the fork's defaults.
FORK_DEFAULTS = {"MODEL.FRE.USE_FREQUENCY_AWARE_ATTENTION": True, "MODEL.FRE.USE_ADAPTIVE_GATING": True,
                 "MODEL.FRE.USE_HIERARCHICAL_FUSION": True, "MODEL.PATCH_VIT.PATCH_STRIDE": 112,
                 "MODEL.PATCH_VIT.ATTN_EMBED_DIM": 1024, "MODEL.PATCH_VIT.NUM_HEADS": 16}


def _get(tree: Any, dotted: str) -> Any:
    node = tree
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise KeyError(dotted)
        node = node[part]
    return node


def _set(cfg: Config, dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node = cfg
    for part in parents:
        node = node[part]
    if isinstance(value, str) and value.strip() == "None":
        value = None  # yacs YAML 'None' that was stored undecoded
    node[last] = list(value) if isinstance(value, tuple) else value


def check_supported(foreign: Mapping[str, Any], source: str) -> None:
    """Refuse configs whose architecture our model does not implement (fixed-resolution, no patch projection)."""
    wants = {"MODEL.SID_APPROACH": "freq_restoration", "MODEL.RESOLUTION_MODE": "arbitrary",
             "MODEL.VIT.PATCH_PROJECTION": True, "MODEL.VIT.PATCH_PROJECTION_PER_FEATURE": True}
    for key, want in wants.items():
        try:
            have = _get(foreign, key)
        except KeyError:
            continue
        if have != want:
            raise CheckpointError(f"{source}: its config has {key} = {have!r}; only {want!r} (the released SPAI "
                                  "architecture) can be imported.")


def map_config(foreign: Mapping[str, Any], base: Config, fork: bool, source: str) -> Config:
    """Our config: ``base`` with every architecture key that ``foreign`` (a pickled yacs config) sets."""
    check_supported(foreign, source)
    cfg = Config(base)
    for theirs, ours in SHARED_KEYS + [(k, k) for k in (FORK_KEYS if fork else [])]:
        try:
            _set(cfg, ours, _get(foreign, theirs))
        except KeyError:
            if fork and ours in FORK_DEFAULTS:
                _set(cfg, ours, FORK_DEFAULTS[ours])
    if fork:
        for key, default in FORK_DEFAULTS.items():
            if key.startswith("MODEL.FRE.USE_"):
                try:
                    _set(cfg, key, bool(_get(foreign, key)))
                except KeyError:
                    _set(cfg, key, default)
    return cfg


def _count(state: Mapping[str, torch.Tensor], regex: str) -> int:
    found = {m.group(1) for k in state if (m := re.fullmatch(regex, k))}
    return len(found)


def _ratio(a: int, b: int) -> float | int:
    r = a / b
    return int(r) if r == int(r) else r


def masking_radius(mask: torch.Tensor | None, default: int = 16) -> int:
    """The radius whose circular mask equals the stored one (the stored mask is loaded anyway)."""
    if mask is None or mask.ndim != 2:
        return default
    for r in range(1, mask.shape[-1] // 2 + 1):
        if torch.equal(circular_mask(mask.shape[-1], r), mask.long()):
            return r
    log.warning("stored frequencies_mask is not a circular mask; it is loaded as is (radius %d in the config).",
                default)
    return default


def infer_head(cfg: Config, state: Mapping[str, torch.Tensor], notes: list[str]) -> None:
    """FRE, aggregator and head dimensions from tensor shapes (shared by upstream and fork)."""
    fp = "mfvit.features_processor."
    n = _count(state, re.escape(fp) + r"patch_projector\.projectors\.(\d+)\.norm1\.weight")
    first = state[fp + "patch_projector.projectors.0.projector.1.weight"]
    p = first.shape[0]
    linears = _count(state, re.escape(fp) + r"patch_projector\.projectors\.0\.projector\.(\d+)\.weight")
    branch = any(k.startswith(fp + "original_features_processor.") for k in state)
    dim = state["to_kv.weight"].shape[1]
    stats = dim - (p if branch else 0)
    heads, _, head_dim = state["patch_aggregator"].shape
    vit, fre, pv = cfg.MODEL.VIT, cfg.MODEL.FRE, cfg.MODEL.PATCH_VIT
    vit.INTERMEDIATE_LAYERS = list(range(vit.DEPTH - n, vit.DEPTH)) if n <= vit.DEPTH else list(range(n))
    vit.PROJECTION_DIM, vit.PROJECTION_LAYERS = int(p), int(linears)
    fre.ORIGINAL_IMAGE_FEATURES_BRANCH = branch
    fre.DISABLE_RECONSTRUCTION_SIMILARITY = stats == 0
    fre.EXTENDED_STATISTICS = stats == 12 * n
    fre.MASKING_RADIUS = masking_radius(state.get("mfvit.frequencies_mask"))
    pv.NUM_HEADS, pv.ATTN_EMBED_DIM = int(heads), int(heads * head_dim)
    cfg.MODEL.CLS_HEAD.MLP_RATIO = _ratio(state["cls_head.head.0.weight"].shape[0], dim)
    notes.append(f"tapped layers {vit.INTERMEDIATE_LAYERS} (the last {n} blocks), projector last activation "
                 f"{fre.PROJECTOR_LAST_LAYER_ACTIVATION_TYPE}, patch stride {pv.PATCH_STRIDE}, minimum patches "
                 f"{pv.MINIMUM_PATCHES} (not stored in tensors)")


def infer_upstream(base: Config, state: Mapping[str, torch.Tensor]) -> tuple[Config, list[str]]:
    """Upstream architecture from tensor shapes; returns the config and the assumptions made."""
    cfg, notes = Config(base), []
    vit = cfg.MODEL.VIT
    patch = state["mfvit.vit.patch_embed.proj.weight"]
    vit.EMBED_DIM, vit.PATCH_SIZE = int(patch.shape[0]), int(patch.shape[-1])
    vit.DEPTH = _count(state, r"mfvit\.vit\.blocks\.(\d+)\.norm1\.weight")
    vit.NUM_HEADS = max(1, vit.EMBED_DIM // 64)
    vit.MLP_RATIO = _ratio(state["mfvit.vit.blocks.0.mlp.fc1.weight"].shape[0], vit.EMBED_DIM)
    vit.IMG_SIZE = int(math.isqrt(state["mfvit.vit.pos_embed"].shape[1] - 1) * vit.PATCH_SIZE)
    notes.append(f"ViT heads {vit.NUM_HEADS} (head width 64)")
    infer_head(cfg, state, notes)
    return cfg, notes


def infer_fork(base: Config, state: Mapping[str, torch.Tensor]) -> tuple[Config, list[str]]:
    """Fork architecture from tensor shapes; returns the config and the assumptions made."""
    from spai.model.importers.clipnames import clip_model_name

    cfg, notes = Config(base), []
    fp = "mfvit.features_processor."
    visual = {k[len("mfvit.vit.clip."):]: v for k, v in state.items() if k.startswith("mfvit.vit.clip.visual.")}
    vit, fre = cfg.MODEL.VIT, cfg.MODEL.FRE
    vit.MODEL, vit.EMBED_DIM, vit.DEPTH = clip_model_name(visual)
    fre.SEMANTIC_DIM = int(state[fp + "cross_attn_proj.0.weight"].shape[1])
    gates = _count(state, re.escape(fp) + r"early_fusion_gates\.(\d+)\.0\.weight")
    fre.EARLY_FUSION_LAYERS = {0: [], 2: [3, 6], 4: [2, 4, 6, 8]}.get(gates)
    if fre.EARLY_FUSION_LAYERS is None:
        raise CheckpointError(f"the checkpoint has {gates} early-fusion gates but no readable config to say which "
                              "layers they serve; pass overrides MODEL.FRE.EARLY_FUSION_LAYERS.")
    fre.USE_FREQUENCY_AWARE_ATTENTION = any(k.startswith(fp + "freq_cross_attention.") for k in state)
    fre.USE_ADAPTIVE_GATING = any(k.startswith(fp + "adaptive_gate.") for k in state)
    fre.USE_HIERARCHICAL_FUSION = any(k.startswith(fp + "hierarchical_fusion.") for k in state)
    fre.USE_CROSS_ATTENTION = True
    notes.append(f"early-fusion layers {fre.EARLY_FUSION_LAYERS} (fork default for {gates} gates), fusion heads "
                 f"{fre.NUM_HEADS} (no effect: each attention has one key)")
    infer_head(cfg, state, notes)
    if any(i >= len(vit.INTERMEDIATE_LAYERS) for i in fre.EARLY_FUSION_LAYERS):
        raise CheckpointError(f"the checkpoint has {gates} early-fusion gates but no readable config to say which "
                              f"layers they serve (the fork's default {fre.EARLY_FUSION_LAYERS} does not fit "
                              f"{len(vit.INTERMEDIATE_LAYERS)} layers); re-save the file with its training config under "
                              "'config' (a dict with MODEL.FRE.EARLY_FUSION_LAYERS).")
    return cfg, notes
