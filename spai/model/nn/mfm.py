"""Upstream SPAI's backbone: the BEiT/MFM-style ViT-B/16 (``MODEL_WEIGHTS: mfm``), frozen.

Same interface as :class:`spai.model.nn.backbone.CLIPBackbone`: ``forward(x) -> (tokens, embedding)`` with ``x``
ImageNet-normalised B x 3 x 224 x 224, ``tokens`` B x len(layers) x 196 x width = the RAW residual-stream output
of each tapped block (no final norm), CLS dropped. ``embedding`` is the last computed block's raw CLS token: upstream
has no semantic embedding, so this is only a placeholder for configs that ask for one.

Architecture (upstream ``vision_transformer.py`` with the released config): patch embedding conv 16x16, learnable CLS
token and absolute position embedding (1 x 197 x width), no pre-norm, blocks ``x + attn(norm1(x))``,
``x + mlp(norm2(x))`` with LayerNorm eps 1e-6, attention bias ``[q_bias, 0, v_bias]`` on a bias-free ``qkv``, exact
GELU, no layer-scale. Parameter names equal upstream's ``mfvit.vit.*`` so its weights load one to one; its unused
tensors (``cls_pos_embed``, ``actual_cls_token``, ``cls_blocks.0.*``, ``fc_norm``, ``intermediate_fc_norm.*``,
``head``) are dropped by the importer (see :data:`UPSTREAM_UNUSED_PREFIXES`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from spai.errors import CheckpointError, ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LN_EPS = 1e-6
# Present in upstream's ViT state dict but unused by SPAI's forward (no CLS head, no final norm).
UPSTREAM_UNUSED_PREFIXES = ("cls_pos_embed", "actual_cls_token", "cls_blocks.", "fc_norm.", "intermediate_fc_norm.",
                            "head.")
# Present in MFM pretraining checkpoints' encoder but unused here (final norm, mask token, classifier).
MFM_PRETRAIN_UNUSED_PREFIXES = ("norm.", "fc_norm.", "head.", "mask_token", "rel_pos_bias.")


class PatchEmbed(nn.Module):
    """``proj``: Conv2d(3, width, patch, stride patch)."""

    def __init__(self, width: int, patch: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, width, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention with separate ``q_bias`` / ``v_bias`` (the key has no bias)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(width))
        self.v_bias = nn.Parameter(torch.zeros(width))
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        bias = torch.cat([self.q_bias, torch.zeros_like(self.v_bias), self.v_bias])
        qkv = F.linear(x, self.qkv.weight, bias)
        q, k, v = qkv.reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        attn = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * (d // self.heads) ** -0.5, dim=-1)
        return self.proj(torch.matmul(attn, v).transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    """``fc1`` -> exact GELU -> ``fc2``."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block without layer-scale."""

    def __init__(self, width: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=LN_EPS)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width, eps=LN_EPS)
        self.mlp = Mlp(width, int(width * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class MFMBackbone(nn.Module):
    """Frozen BEiT/MFM ViT returning raw block outputs of the tapped layers (see the module docstring)."""

    mean = IMAGENET_MEAN
    std = IMAGENET_STD

    def __init__(self, width: int = 768, depth: int = 12, heads: int = 12, mlp_ratio: float = 4.0,
                 patch: int = 16, img_size: int = 224, layers: list[int] | None = None) -> None:
        super().__init__()
        if width % heads:
            raise ConfigError(f"MODEL.VIT.EMBED_DIM ({width}) must be divisible by MODEL.VIT.NUM_HEADS ({heads}).")
        self.layers = [int(i) for i in (range(depth) if layers is None else layers)]
        if not self.layers or max(self.layers) >= depth or min(self.layers) < 0:
            raise ConfigError(f"MODEL.VIT.INTERMEDIATE_LAYERS {self.layers} must index the {depth} blocks "
                              "(MODEL.VIT.DEPTH).")
        self.width = self.embed_dim = width
        tokens = (img_size // patch) ** 2 + 1
        self.patch_embed = PatchEmbed(width, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens, width))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio) for _ in range(depth))
        self.requires_grad_(False)

    @classmethod
    def from_config(cls, cfg: Any) -> MFMBackbone:
        """Build from ``MODEL.VIT.*`` (random weights; :func:`spai.model.factory.build_backbone` loads weight files)."""
        vit = cfg.MODEL.VIT
        return cls(int(vit.EMBED_DIM), int(vit.DEPTH), int(vit.NUM_HEADS), float(vit.MLP_RATIO),
                   int(vit.PATCH_SIZE), int(vit.IMG_SIZE), list(vit.INTERMEDIATE_LAYERS))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1) + self.pos_embed.to(x.dtype)
        taps = []
        for i, block in enumerate(self.blocks[: max(self.layers) + 1]):
            x = block(x)
            if i in self.layers:
                taps.append(x[:, 1:])
        return torch.stack(taps, dim=1), x[:, 0]


def declared_unused(key: str, prefixes: tuple[str, ...]) -> bool:
    """True when ``key`` (relative to the ViT) is one of the known-unused tensors."""
    return any(key == p.rstrip(".") or key.startswith(p) for p in prefixes)


def split_backbone_state(state: dict[str, torch.Tensor], prefixes: tuple[str, ...], source: str
                         ) -> dict[str, torch.Tensor]:
    """Drop the declared-unused keys of a ViT state dict (relative names); anything else passes through."""
    kept = {k: v for k, v in state.items() if not declared_unused(k, prefixes)}
    if not kept:
        raise CheckpointError(f"{source}: no backbone tensors found after dropping the unused ones.")
    return kept
