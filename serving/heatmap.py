"""Heatmaps of per-patch attention over the image: patch positions from :func:`spai.patching.patch_corners`
(in the reflect-padded frame, shifted back to the original image; overlapping five-crop patches averaged)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from spai.images import decode_image
from spai.patching import PatchSpec, patch_corners


def attention_map(height: int, width: int, attention: np.ndarray, spec: PatchSpec = PatchSpec()) -> np.ndarray:
    """H x W float map: each pixel = mean attention of the patches covering it (0 where none does)."""
    ph, pw = max(height, spec.size), max(width, spec.size)
    top, left = (ph - height) // 2, (pw - width) // 2
    corners = patch_corners(ph, pw, spec)
    if len(attention) != len(corners):
        raise ValueError(f"{len(attention)} attention weights for {len(corners)} patches of a {width}x{height} image")
    total, count = np.zeros((ph, pw), np.float64), np.zeros((ph, pw), np.float64)
    for a, (t, c) in zip(attention, corners):
        total[t:t + spec.size, c:c + spec.size] += a
        count[t:t + spec.size, c:c + spec.size] += 1
    heat = np.divide(total, count, out=np.zeros_like(total), where=count > 0)
    return heat[top:top + height, left:left + width]


def save_heatmap(image_path: str | Path, attention: np.ndarray, out_path: str | Path, alpha: float = 0.5,
                 spec: PatchSpec = PatchSpec()) -> Path:
    """Blend the attention map (min-max scaled, 'inferno' colormap) over the image; writes a PNG."""
    from matplotlib import colormaps

    rgb = decode_image(Path(image_path)).permute(1, 2, 0).numpy()
    heat = attention_map(rgb.shape[0], rgb.shape[1], np.asarray(attention, np.float64), spec)
    span = heat.max() - heat.min()
    scaled = (heat - heat.min()) / span if span > 0 else np.zeros_like(heat)
    colour = (colormaps["inferno"](scaled)[..., :3] * 255).astype(np.uint8)
    blended = Image.blend(Image.fromarray(rgb), Image.fromarray(colour), alpha)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    blended.save(out)
    return out
