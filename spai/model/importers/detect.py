"""Checkpoint layout detection: which foreign format a state dict is, and a useful error when none fits."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from spai.errors import CheckpointError
from spai.model.nn.mfm import MFM_PRETRAIN_UNUSED_PREFIXES, UPSTREAM_UNUSED_PREFIXES, split_backbone_state

UPSTREAM, FORK, CLIP, MFM_PRETRAIN = "upstream-spai", "fusion-fork", "clip", "mfm-pretrain"
DESCRIPTIONS = {
    UPSTREAM: "upstream SPAI spai.pth / ckpt_epoch_N.pth (mfvit.vit.blocks.*, MFM ViT backbone)",
    FORK: "fusion-fork ckpt_epoch_N.pth (CLIP under mfvit.vit.clip.*, fusion modules)",
    CLIP: "bare open_clip / OpenAI CLIP weights (visual.*; backbone only)",
    MFM_PRETRAIN: "MFM pretraining checkpoint (encoder.*; backbone only)",
}
# Text-tower tensors of a whole CLIP model: never used by SPAI (declared unused).
CLIP_TEXT_PREFIXES = ("transformer.", "token_embedding.", "positional_embedding", "ln_final.", "text_projection",
                      "logit_scale", "attn_mask", "input_resolution", "context_length", "vocab_size")
_VIT_PATTERNS = ["cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"] + [
    f"blocks.#.{n}" for n in ("norm1.weight", "norm1.bias", "attn.q_bias", "attn.v_bias", "attn.qkv.weight",
                              "attn.proj.weight", "attn.proj.bias", "norm2.weight", "norm2.bias", "mlp.fc1.weight",
                              "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias")]
_CLIP_PATTERNS = ["visual.conv1.weight", "visual.class_embedding", "visual.positional_embedding",
                  "visual.ln_pre.weight", "visual.ln_post.weight", "visual.proj"] + [
    f"visual.transformer.resblocks.#.{n}" for n in ("ln_1.weight", "attn.in_proj_weight", "attn.in_proj_bias",
                                                    "attn.out_proj.weight", "ln_2.weight", "mlp.c_fc.weight",
                                                    "mlp.c_proj.weight")]
_HEAD_PATTERNS = ["patch_aggregator", "mfvit.frequencies_mask", "to_kv.weight", "to_out.#.weight", "norm.weight",
                  "norm.bias", "cls_head.head.#.weight", "cls_head.head.#.bias",
                  "mfvit.features_processor.patch_projector.projectors.#.norm1.weight",
                  "mfvit.features_processor.patch_projector.projectors.#.projector.#.weight",
                  "mfvit.features_processor.original_features_processor.alpha"]
REFERENCE_PATTERNS: dict[str, set[str]] = {
    UPSTREAM: set(_HEAD_PATTERNS) | {f"mfvit.vit.{p}" for p in _VIT_PATTERNS},
    FORK: set(_HEAD_PATTERNS) | {f"mfvit.vit.clip.{p}" for p in _CLIP_PATTERNS} | {
        "mfvit.features_processor.cross_attn_proj.#.weight", "mfvit.features_processor.cross_attention.in_proj_weight",
        "mfvit.features_processor.semantic_proj.#.weight"},
    CLIP: set(_CLIP_PATTERNS),
    MFM_PRETRAIN: {f"encoder.{p}" for p in _VIT_PATTERNS},
}

_HEAD_PREFIXES = ("patch_aggregator", "mfvit.frequencies_mask", "to_kv.", "to_out.", "norm.", "cls_head.",
                  "mfvit.features_processor.patch_projector.", "mfvit.features_processor.original_features_processor.")
# Key prefixes each format may contain (used to list a file's unexpected keys against the closest format).
KNOWN_PREFIXES: dict[str, tuple[str, ...]] = {
    UPSTREAM: _HEAD_PREFIXES + tuple(f"mfvit.vit.{p}" for p in ("cls_token", "pos_embed", "patch_embed.", "blocks.")
                                     + UPSTREAM_UNUSED_PREFIXES),
    FORK: _HEAD_PREFIXES + ("mfvit.vit.clip.", "mfvit.features_processor."),
    CLIP: ("visual.",) + CLIP_TEXT_PREFIXES,
    MFM_PRETRAIN: ("encoder.", "decoder."),
}


def model_state(data: Mapping[str, Any], source: str) -> dict[str, torch.Tensor]:
    """The state dict inside a checkpoint: ``model``, ``state_dict`` or the file itself; ``module.`` stripped."""
    for key in ("model", "state_dict"):
        if isinstance(data.get(key), Mapping):
            data = data[key]
            break
    state = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise CheckpointError(f"{source} holds no tensors (keys: {sorted(data)[:8]}); expected a checkpoint with "
                              "a 'model' state dict or a bare state dict.")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def pattern(key: str) -> str:
    """Key with every index replaced by '#' (``blocks.3.attn`` -> ``blocks.#.attn``)."""
    return re.sub(r"(?<=\.)\d+(?=\.|$)", "#", key)


def detect_format(state: Mapping[str, torch.Tensor], source: str) -> str:
    """One of UPSTREAM, FORK, CLIP, MFM_PRETRAIN; anything else -> error naming the closest format."""
    if any(k.startswith("mfvit.vit.clip.visual.") for k in state):
        return FORK
    if any(k.startswith("mfvit.vit.blocks.") for k in state):
        return UPSTREAM
    if any(k.startswith("encoder.blocks.") for k in state):
        return MFM_PRETRAIN
    if any(k.startswith("visual.transformer.resblocks.") for k in state):
        return CLIP
    raise unknown_layout_error(state, source)


def unknown_layout_error(state: Mapping[str, Any], source: str) -> CheckpointError:
    """Error naming the closest known format and the key patterns that differ from it."""
    have = {pattern(k) for k in state}
    best = max(REFERENCE_PATTERNS, key=lambda f: len(have & REFERENCE_PATTERNS[f]) / len(REFERENCE_PATTERNS[f]))
    ref = REFERENCE_PATTERNS[best]
    missing = sorted(ref - have)
    extra = sorted(k for k in have - ref if not k.startswith(KNOWN_PREFIXES[best]))

    def show(keys: list[str]) -> str:
        return ", ".join(keys[:6]) + (f" (+{len(keys) - 6} more)" if len(keys) > 6 else "") if keys else "none"
    return CheckpointError(
        f"{source}: unknown checkpoint layout. Closest known format: {DESCRIPTIONS[best]}; keys it expects that "
        f"the file lacks: {show(missing)}; keys in the file it does not expect: {show(extra)}. Supported: "
        f"{'; '.join(DESCRIPTIONS.values())}, and our own checkpoints (spai convert writes them).")


def strip_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Entries under ``prefix`` with the prefix removed."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def extract_mfm_backbone(data: Mapping[str, Any], source: str) -> dict[str, torch.Tensor]:
    """MFM ViT weights (our relative names) from an MFM pretrain file, upstream SPAI or our native checkpoint."""
    state = model_state(data, source)
    if any(k.startswith("encoder.") for k in state):
        other = sorted(k for k in state if not k.startswith(("encoder.", "decoder.")))
        if other:
            raise CheckpointError(f"{source}: MFM pretrain checkpoint with unexpected keys {other[:6]}; expected "
                                  "only encoder.* (used) and decoder.* (unused).")
        return split_backbone_state(strip_prefix(state, "encoder."), MFM_PRETRAIN_UNUSED_PREFIXES, source)
    if any(k.startswith("mfvit.vit.") for k in state):
        return split_backbone_state(strip_prefix(state, "mfvit.vit."), UPSTREAM_UNUSED_PREFIXES, source)
    return split_backbone_state(dict(state), UPSTREAM_UNUSED_PREFIXES, source)
