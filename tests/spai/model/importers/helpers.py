"""Synthetic upstream / fork checkpoints with the documented key layouts, saved the way the original code saves them."""

from __future__ import annotations

import sys
import types
from collections import OrderedDict
from pathlib import Path

import torch

from spai.model.nn.spectral import circular_mask


def install_fake_yacs() -> type:
    """A module ``yacs.config`` with a ``CfgNode`` dict subclass, so pickles reference yacs.config.CfgNode."""
    if "yacs.config" in sys.modules and hasattr(sys.modules["yacs.config"], "CfgNode"):
        return sys.modules["yacs.config"].CfgNode
    yacs, config = types.ModuleType("yacs"), types.ModuleType("yacs.config")

    class CfgNode(dict):
        def __init__(self, init: dict | None = None) -> None:
            super().__init__()
            for k, v in (init or {}).items():
                self[k] = CfgNode(v) if isinstance(v, dict) else v
            self.__dict__["__immutable__"] = False  # what yacs keeps: a flag and a set of deprecated keys
            self.__dict__["__deprecated_keys__"] = set()
            self.__dict__["__new_allowed__"] = False

    CfgNode.__module__, CfgNode.__qualname__ = "yacs.config", "CfgNode"
    config.CfgNode = CfgNode
    yacs.config = config
    sys.modules["yacs"], sys.modules["yacs.config"] = yacs, config
    return CfgNode


def save_original(path: Path, model: dict[str, torch.Tensor], config: dict | None) -> Path:
    """Like upstream's utils.save_checkpoint: model, optimizer, lr_scheduler, max_accuracy, epoch, config."""
    cfg_node = install_fake_yacs()(config) if config is not None else None
    trainable = [k for k in model if not k.startswith("mfvit.vit.")]
    optimizer = {"state": {i: {"step": torch.tensor(3.0), "exp_avg": torch.zeros_like(model[k]),
                               "exp_avg_sq": torch.zeros_like(model[k])} for i, k in enumerate(trainable[:3])},
                 "param_groups": [{"lr": 1e-4, "params": list(range(3))}]}
    payload = {"model": OrderedDict(model), "optimizer": optimizer, "lr_scheduler": {"last_epoch": 9},
               "max_accuracy": 0.97, "epoch": 9, "config": cfg_node}
    torch.save(payload, path)
    return path


def _rand(shape: tuple[int, ...], gen: torch.Generator, scale: float = 0.05) -> torch.Tensor:
    return torch.randn(shape, generator=gen) * scale


def _ln(out: dict, name: str, dim: int, gen: torch.Generator) -> None:
    out[f"{name}.weight"] = 1 + _rand((dim,), gen, 0.1)
    out[f"{name}.bias"] = _rand((dim,), gen, 0.1)


def _linear(out: dict, name: str, o: int, i: int, gen: torch.Generator, bias: bool = True) -> None:
    out[f"{name}.weight"] = _rand((o, i), gen, i ** -0.5)
    if bias:
        out[f"{name}.bias"] = _rand((o,), gen, 0.02)


def _projector(out: dict, name: str, i: int, o: int, layers: int, gen: torch.Generator, norm1: bool) -> None:
    if norm1:
        _ln(out, f"{name}.norm1", i, gen)
    for j in range(layers):
        _linear(out, f"{name}.projector.{1 + 3 * j}", o, i if j == 0 else o, gen)
    _ln(out, f"{name}.norm2", o, gen)


def _mfm_block(out: dict, p: str, w: int, gen: torch.Generator) -> None:
    _ln(out, f"{p}.norm1", w, gen)
    out[f"{p}.attn.q_bias"], out[f"{p}.attn.v_bias"] = _rand((w,), gen), _rand((w,), gen)
    _linear(out, f"{p}.attn.qkv", 3 * w, w, gen, bias=False)
    _linear(out, f"{p}.attn.proj", w, w, gen)
    _ln(out, f"{p}.norm2", w, gen)
    _linear(out, f"{p}.mlp.fc1", 4 * w, w, gen)
    _linear(out, f"{p}.mlp.fc2", w, 4 * w, gen)


def head_layout(out: dict, w: int, n: int, p: int, layers: int, heads: int, embed: int, ratio: int, stats: int,
                gen: torch.Generator) -> None:
    """FRE projectors + context branch, SCA and classification head (upstream names, §7)."""
    fp = "mfvit.features_processor"
    for i in range(n):
        _projector(out, f"{fp}.patch_projector.projectors.{i}", w, p, layers, gen, True)
    ofp = f"{fp}.original_features_processor"
    out[f"{ofp}.alpha"] = torch.randn((1, n, p), generator=gen)
    _projector(out, f"{ofp}.proj1", 2 * p, p, layers, gen, False)
    _projector(out, f"{ofp}.proj2", p, p, layers, gen, False)
    dim = stats * n + p
    out["patch_aggregator"] = _rand((heads, 1, embed // heads), gen, 0.5)
    _linear(out, "to_kv", 2 * embed, dim, gen, bias=False)
    _linear(out, "to_out.0", dim, embed, gen, bias=False)
    _ln(out, "norm", dim, gen)
    _linear(out, "cls_head.head.0", dim * ratio, dim, gen)
    _linear(out, "cls_head.head.3", dim * ratio, dim * ratio, gen)
    _linear(out, "cls_head.head.6", 1, dim * ratio, gen)


def upstream_layout(w: int = 768, depth: int = 12, p: int = 1024, heads: int = 12, embed: int = 1536,
                    ratio: int = 3, layers: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    """Upstream SPAI's ``model`` state dict (§7 of spai-upstream.md) with random values."""
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {"mfvit.frequencies_mask": circular_mask(224, 16)}
    v = "mfvit.vit"
    out[f"{v}.cls_token"], out[f"{v}.pos_embed"] = _rand((1, 1, w), gen, 0.5), _rand((1, 197, w), gen, 0.5)
    out[f"{v}.cls_pos_embed"], out[f"{v}.actual_cls_token"] = _rand((1, 197, w), gen), _rand((1, 1, w), gen)
    out[f"{v}.patch_embed.proj.weight"] = _rand((w, 3, 16, 16), gen, 0.03)
    out[f"{v}.patch_embed.proj.bias"] = _rand((w,), gen)
    for i in range(depth):
        _mfm_block(out, f"{v}.blocks.{i}", w, gen)
    _mfm_block(out, f"{v}.cls_blocks.0", w, gen)
    _ln(out, f"{v}.fc_norm", w, gen)
    for i in range(depth):
        _ln(out, f"{v}.intermediate_fc_norm.{i}", w, gen)
    _linear(out, f"{v}.head", 2, w * depth, gen)
    head_layout(out, w, depth, p, layers, heads, embed, ratio, 6, gen)
    return out


def upstream_config(w: int, depth: int, vit_heads: int, p: int, heads: int, embed: int, ratio: int) -> dict:
    """The relevant part of upstream's yacs config (spai.yaml on top of the defaults)."""
    return {"MODEL_WEIGHTS": "mfm", "DATA": {"IMG_SIZE": 224, "BATCH_SIZE": 72},
            "MODEL": {"SID_APPROACH": "freq_restoration", "RESOLUTION_MODE": "arbitrary", "TYPE": "vit",
                      "NUM_CLASSES": 2, "SID_DROPOUT": 0.5, "FEATURE_EXTRACTION_BATCH": 400,
                      "VIT": {"EMBED_DIM": w, "DEPTH": depth, "NUM_HEADS": vit_heads, "MLP_RATIO": 4,
                              "PATCH_SIZE": 16, "INIT_VALUES": None, "INTERMEDIATE_LAYERS": list(range(depth)),
                              "PROJECTION_DIM": p, "PROJECTION_LAYERS": 2, "PATCH_PROJECTION": True,
                              "PATCH_PROJECTION_PER_FEATURE": True, "USE_INTERMEDIATE_LAYERS": True},
                      "FRE": {"MASKING_RADIUS": 16, "PROJECTOR_LAST_LAYER_ACTIVATION_TYPE": None,
                              "ORIGINAL_IMAGE_FEATURES_BRANCH": True, "DISABLE_RECONSTRUCTION_SIMILARITY": False},
                      "PATCH_VIT": {"PATCH_STRIDE": 224, "NUM_HEADS": heads, "ATTN_EMBED_DIM": embed,
                                    "MINIMUM_PATCHES": 4},
                      "CLS_HEAD": {"MLP_RATIO": ratio}},
            "TRAIN": {"EPOCHS": 35, "BASE_LR": 5e-4, "CLIP_GRAD": None}}


def _mha(out: dict, name: str, e: int, gen: torch.Generator) -> None:
    out[f"{name}.in_proj_weight"] = _rand((3 * e, e), gen, e ** -0.5)
    out[f"{name}.in_proj_bias"] = _rand((3 * e,), gen, 0.02)
    _linear(out, f"{name}.out_proj", e, e, gen)


def _gate_mlp(out: dict, name: str, i: int, hidden: int, o: int, gen: torch.Generator) -> None:
    _linear(out, f"{name}.0", hidden, i, gen)
    _ln(out, f"{name}.1", hidden, gen)
    _linear(out, f"{name}.3", o, hidden, gen)


def fork_fusion_layout(out: dict, d: int, p: int, s: int, n_gates: int, gen: torch.Generator) -> None:
    """The fork's fusion modules (fusion-fork.md), all switches on."""
    fp = "mfvit.features_processor"
    _linear(out, f"{fp}.semantic_proj.0", d, s, gen, bias=False)
    _ln(out, f"{fp}.semantic_proj.1", d, gen)
    _linear(out, f"{fp}.cross_attn_proj.0", p, s, gen, bias=False)
    _ln(out, f"{fp}.cross_attn_proj.1", p, gen)
    for k in range(3):
        _gate_mlp(out, f"{fp}.freq_semantic_encoders.{k}", s, s // 2, s, gen)
        _mha(out, f"{fp}.freq_cross_attention.{k}", p, gen)
        _ln(out, f"{fp}.freq_attention_norms.{k}", p, gen)
    for i in range(n_gates):
        _gate_mlp(out, f"{fp}.early_fusion_gates.{i}", d + s, 2 * d, d, gen)
    _gate_mlp(out, f"{fp}.adaptive_gate", d + s, d, 1, gen)
    _mha(out, f"{fp}.cross_attention", p, gen)
    _ln(out, f"{fp}.cross_attention_norm", p, gen)
    _linear(out, f"{fp}.hierarchical_fusion.0", 2 * p, 3 * p, gen)
    _ln(out, f"{fp}.hierarchical_fusion.1", 2 * p, gen)
    _linear(out, f"{fp}.hierarchical_fusion.4", p, 2 * p, gen)
    _ln(out, f"{fp}.hierarchical_fusion.5", p, gen)


def clip_full_state(model_name: str, seed: int) -> dict[str, torch.Tensor]:
    """A whole open_clip model's state dict (visual + text tower), random but non-trivial LayerNorms."""
    import open_clip

    from spai.model.nn.backbone import _import_open_clip

    _import_open_clip()
    torch.manual_seed(seed)
    model = open_clip.create_model(model_name, pretrained=None, force_quick_gelu=True)
    sd = model.state_dict()
    gen = torch.Generator().manual_seed(seed)
    for k, v in sd.items():
        if v.is_floating_point():
            sd[k] = v + _rand(tuple(v.shape), gen, 0.05)
    return sd


def fork_layout(w: int, depth: int, p: int, s: int, gates: int, heads: int, embed: int, ratio: int,
                layers: int = 2, seed: int = 1) -> dict[str, torch.Tensor]:
    """The fork's ``model`` state dict at the given widths: whole CLIP under mfvit.vit.clip.*, fusion, head."""
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {"mfvit.frequencies_mask": circular_mask(224, 16)}
    for k, v in clip_full_state("spai-tiny-vit" if w == 64 else "ViT-B-16", seed).items():
        out[f"mfvit.vit.clip.{k}"] = v
    fork_fusion_layout(out, w, p, s, gates, gen)
    head_layout(out, w, depth, p, layers, heads, embed, ratio, 12, gen)
    return out


def fork_config(w: int, depth: int, p: int, s: int, fusion_layers: list[int], fre_heads: int, heads: int,
                embed: int, ratio: int) -> dict:
    """The fork's yacs config (its config.py defaults + a training yaml)."""
    cfg = upstream_config(w, depth, 12, p, heads, embed, ratio)
    cfg["MODEL_WEIGHTS"] = "clip"
    cfg["MODEL"]["SID_DROPOUT"] = 0.3
    cfg["MODEL"]["FRE"].update({"SEMANTIC_DIM": s, "NUM_HEADS": fre_heads, "EARLY_FUSION_LAYERS": fusion_layers,
                                "DROPOUT": 0.5, "ATTN_DROPOUT": 0.1, "FUSION_DIM": 1024,
                                "USE_FREQUENCY_AWARE_ATTENTION": True, "USE_ADAPTIVE_GATING": True,
                                "USE_HIERARCHICAL_FUSION": True})
    return cfg
