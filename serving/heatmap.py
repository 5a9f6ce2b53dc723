"""Heatmaps of per-patch attention over the image: patch positions from :func:`spai.patching.patch_grid` (in the
reflect-padded frame, shifted back to the original image; overlapping five-crop patches averaged)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from spai.images import decode_image
from spai.patching import PatchSpec, patch_grid


def attention_map(height: int, width: int, attention: np.ndarray, spec: PatchSpec = PatchSpec()) -> np.ndarray:
    """H x W float map: each pixel = mean attention of the patches covering it (0 where none does)."""
    grid = patch_grid(height, width, spec)
    if len(attention) != grid.num_patches:
        raise ValueError(f"{len(attention)} attention weights for {grid.num_patches} patches of a {width}x{height} "
                         "image")
    s = grid.size
    total = np.zeros((grid.padded_height, grid.padded_width), np.float64)
    count = np.zeros_like(total)
    for a, (t, c) in zip(attention, grid.corners):
        total[t:t + s, c:c + s] += a
        count[t:t + s, c:c + s] += 1
    heat = np.divide(total, count, out=np.zeros_like(total), where=count > 0)
    return heat[grid.pad_top:grid.pad_top + height, grid.pad_left:grid.pad_left + width]


def save_heatmap(image_path: str | Path, attention: np.ndarray, out_path: str | Path, alpha: float = 0.5,
                 spec: PatchSpec = PatchSpec()) -> Path:
    """Blend the attention map (min-max scaled, 'inferno' colormap) over the image; writes a PNG."""
    from matplotlib import colormaps

    rgb = decode_image(Path(image_path))
    heat = attention_map(rgb.shape[0], rgb.shape[1], np.asarray(attention, np.float64), spec)
    span = heat.max() - heat.min()
    scaled = (heat - heat.min()) / span if span > 0 else np.zeros_like(heat)
    colour = (colormaps["inferno"](scaled)[..., :3] * 255).astype(np.uint8)
    blended = Image.blend(Image.fromarray(rgb), Image.fromarray(colour), alpha)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    blended.save(out)
    return out
