"""Spectral context attention over an image's patch vectors, LayerNorm and classification head (upstream names)."""

from __future__ import annotations

import torch
from torch import nn

# Additive bias for padded patches: exp() underflows to exactly 0 in fp32, and it is finite (TensorRT-safe).
MASKED_LOGIT = -1.0e9


class ClassificationHead(nn.Module):
    """Linear(d, d*r) -> ReLU -> Dropout -> Linear(d*r, d*r) -> ReLU -> Dropout -> Linear(d*r, 1)."""

    def __init__(self, dim: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.head = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, hidden),
                                  nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)


def spectral_context_attention(features: torch.Tensor, mask: torch.Tensor, query: torch.Tensor, to_kv: nn.Module,
                               to_out: nn.Module, dropout: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """One learnable query per head attends over each image's L patch vectors (no residual, no FFN).

    ``features``: B x L x D, ``mask``: B x L (True = real patch), ``query``: heads x 1 x head_dim (upstream's
    ``patch_aggregator``) -> (B x D, attention B x heads x L). Padded patches get exactly zero weight.
    """
    b, n, _ = features.shape
    heads, _, head_dim = query.shape
    k, v = to_kv(features).chunk(2, dim=-1)
    k = k.reshape(b, n, heads, head_dim).transpose(1, 2)  # B x H x L x hd
    v = v.reshape(b, n, heads, head_dim).transpose(1, 2)
    logits = torch.matmul(query.unsqueeze(0), k.transpose(-1, -2)) * head_dim ** -0.5  # B x H x 1 x L
    bias = (~mask.bool()).to(logits.dtype) * MASKED_LOGIT
    attn = torch.softmax(logits + bias[:, None, None, :], dim=-1)
    out = torch.matmul(dropout(attn), v)  # B x H x 1 x hd
    out = out.transpose(1, 2).reshape(b, heads * head_dim)
    return to_out(out), attn.squeeze(2)
