"""Frozen CLIP vision tower (open_clip) that returns every block's ``ln_2`` tokens and the image embedding.

The residual blocks are iterated here (no forward hooks), with attention computed from the block's own weights,
so the same code runs eagerly, under ``torch.compile`` and in ONNX export, and ONE pass over a batch gives both the
intermediate tokens (for the spectral statistics) and the semantic embedding (``ln_post`` of CLS, then ``proj``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from spai.errors import CheckpointError, ConfigError

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
OPEN_CLIP_CONFIG_DIR = Path(__file__).resolve().parents[2] / "model_configs" / "open_clip"


def _import_open_clip() -> Any:
    try:
        import open_clip
    except Exception as e:  # torchvision / CUDA-torch mismatch surfaces here as RuntimeError
        raise ConfigError(
            f"open_clip_torch cannot be imported ({type(e).__name__}: {e}). Install the PyPI torch with its "
            "matching torchvision (`make install`); the CPU-only torch 2.13.0 wheel breaks torchvision.") from e
    open_clip.add_model_config(OPEN_CLIP_CONFIG_DIR)
    return open_clip


def create_clip_visual(model_name: str, weights: str | Path | None = None, quick_gelu: bool = False) -> nn.Module:
    """Build open_clip's ``VisionTransformer`` for ``model_name``; ``weights`` is a local file or None (random)."""
    open_clip = _import_open_clip()
    if model_name not in open_clip.list_models():
        raise ConfigError(f"Unknown open_clip model {model_name!r} (MODEL.VIT.MODEL); "
                          f"for example 'ViT-B-16' or 'spai-tiny-vit'.")
    if weights is not None and not Path(weights).is_file():
        raise CheckpointError(f"CLIP weights file {weights} does not exist; pass a local open_clip or OpenAI "
                              "CLIP ViT-B/16 file (no hub downloads are made).")
    logging.getLogger("root").disabled = True  # open_clip logs a warning for random weights
    try:
        clip = open_clip.create_model(model_name, pretrained=str(weights) if weights else None,
                                      force_quick_gelu=quick_gelu, device="cpu")
    except (RuntimeError, KeyError, ValueError) as e:
        raise CheckpointError(f"Cannot load CLIP weights from {weights}: {e}") from e
    finally:
        logging.getLogger("root").disabled = False
    return clip.visual


class CLIPBackbone(nn.Module):
    """Frozen open_clip vision tower: ``forward(x) -> (tokens, embedding)``.

    ``x``: B x 3 x 224 x 224, already normalised with :attr:`mean` / :attr:`std`.
    ``tokens``: B x len(layers) x 196 x width (``ln_2`` outputs, CLS dropped); ``embedding``: B x output_dim.
    """

    mean = OPENAI_CLIP_MEAN
    std = OPENAI_CLIP_STD

    def __init__(self, visual: nn.Module, layers: list[int]) -> None:
        super().__init__()
        self.clip = nn.Module()  # parameter names mfvit.vit.clip.visual.* as in the fusion fork's checkpoints
        self.clip.visual = visual
        self.layers = [int(i) for i in layers]
        blocks = visual.transformer.resblocks
        if max(self.layers) >= len(blocks):
            raise ConfigError(f"MODEL.VIT.INTERMEDIATE_LAYERS asks for layer {max(self.layers)} but the backbone "
                              f"has {len(blocks)} blocks.")
        self.width = visual.conv1.out_channels
        self.embed_dim = visual.output_dim
        self.requires_grad_(False)

    def _attention(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        attn = block.attn
        b, n, d = x.shape
        heads = attn.num_heads
        qkv = F.linear(x, attn.in_proj_weight, attn.in_proj_bias)
        q, k, v = qkv.reshape(b, n, 3, heads, d // heads).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(1, 2).reshape(b, n, d)
        return attn.out_proj(out)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        v = self.clip.visual
        x = v.conv1(x)
        x = x.flatten(2).transpose(1, 2)
        cls = v.class_embedding.to(x.dtype).reshape(1, 1, -1).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)
        x = v.ln_pre(x)
        taps = []
        last = max(self.layers)
        for i, block in enumerate(v.transformer.resblocks[: last + 1]):
            x = x + block.ls_1(self._attention(block, block.ln_1(x)))
            h = block.ln_2(x)
            if i in self.layers:
                taps.append(h[:, 1:])
            x = x + block.ls_2(block.mlp(h))
        for block in v.transformer.resblocks[last + 1:]:
            x = x + block.ls_1(self._attention(block, block.ln_1(x)))
            x = x + block.ls_2(block.mlp(block.ln_2(x)))
        embedding = v.ln_post(x[:, 0]) @ v.proj
        return torch.stack(taps, dim=1), embedding


def highpass_patch_embedding(visual: nn.Module, cutoff: int = 4, gain: float = 8.0, seed: int = 0) -> None:
    """Deterministic structured init of an UNTRAINED backbone's patch embedding (``MODEL.VIT.INIT: highpass``).

    A randomly initialised CLIP tower is barely sensitive to high frequencies: its tokens are dominated by the
    patch mean (DC) response and the positional embedding, so SPAI's reconstruction-similarity statistics hardly
    vary between images. For backbones without pretrained weights (``spai-tiny``) ``conv1`` is set to seeded
    Gaussian filters whose 2-D DCT coefficients with ``max(ky, kx) < cutoff`` (per channel) are zeroed, each
    filter scaled to L2 norm ``gain``: every token then measures the patch's high-frequency content (noise,
    upsampling periodicities) and ignores the smooth content that the low-pass view keeps. Same seed, same weights.
    """
    weight = visual.conv1.weight
    p = weight.shape[-1]
    n = torch.arange(p, dtype=torch.float64)
    basis = torch.cos(torch.pi * (2 * n[None, :] + 1) * n[:, None] / (2 * p)) * (2.0 / p) ** 0.5
    basis[0] /= 2 ** 0.5  # orthonormal DCT-II rows: k x n
    gen = torch.Generator().manual_seed(int(seed))
    filters = torch.randn(weight.shape, generator=gen, dtype=torch.float64)
    coeffs = basis @ filters @ basis.T
    keep = (torch.maximum(n[:, None], n[None, :]) >= cutoff).double()
    filters = basis.T @ (coeffs * keep) @ basis
    filters = filters / filters.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * gain
    with torch.no_grad():
        weight.copy_(filters.to(weight.dtype))
        if visual.conv1.bias is not None:
            visual.conv1.bias.zero_()


def open_clip_reference_features(visual: nn.Module, x: torch.Tensor, layers: list[int]) -> tuple[torch.Tensor,
                                                                                                 torch.Tensor]:
    """Reference: the same outputs via forward hooks on open_clip's own forward (tests only)."""
    captured: dict[int, torch.Tensor] = {}
    handles = [blk.ln_2.register_forward_hook(lambda m, i, o, k=k: captured.__setitem__(k, o))
               for k, blk in enumerate(visual.transformer.resblocks)]
    try:
        embedding = visual(x)
    finally:
        for h in handles:
            h.remove()
    taps = [captured[i] for i in layers]
    if not getattr(visual.transformer, "batch_first", True):
        taps = [t.transpose(0, 1) for t in taps]
    return torch.stack([t[:, 1:] for t in taps], dim=1), embedding

