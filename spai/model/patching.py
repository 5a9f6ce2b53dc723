"""Any-resolution patching exactly as SPAI: reflect-101 centre padding to 224, a 224 grid with the configured
stride (remainders dropped, row-major), five-crop when the grid has fewer than MINIMUM_PATCHES patches.

Pure numpy (no torch). :func:`patch_grid` computes an image's geometry once; :func:`cut_patches` cuts any run of
its patches, so huge images are cut chunk by chunk and only ``chunk`` patches are ever materialised. Images are
H x W x C (the decoder's layout, no full-size transpose); patches come out N x C x S x S.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

PATCH_SIZE = 224


@dataclass(frozen=True)
class PatchSpec:
    """How images are cut: patch size, grid stride and the five-crop threshold."""

    size: int = PATCH_SIZE
    stride: int = PATCH_SIZE
    minimum_patches: int = 4


def patch_spec_from_config(cfg: Any) -> PatchSpec:
    """The patch spec of a model config (``MODEL.VIT.IMG_SIZE``, ``MODEL.PATCH_VIT.PATCH_STRIDE`` /
    ``MINIMUM_PATCHES``): what :class:`spai.SPAIModel` cuts with, known without building the model."""
    pv = cfg.MODEL.PATCH_VIT
    return PatchSpec(cfg.MODEL.VIT.IMG_SIZE, pv.PATCH_STRIDE, pv.MINIMUM_PATCHES)


@dataclass(frozen=True)
class PatchGrid:
    """Geometry of one image: its size, its reflect-101 padding to at least ``size`` a side (top/left share
    ``pad_top`` / ``pad_left``, the rest goes bottom/right) and the top-left corners of its patches in the
    padded frame, in SPAI's order."""

    height: int
    width: int
    size: int
    pad_top: int
    pad_left: int
    padded_height: int
    padded_width: int
    corners: tuple[tuple[int, int], ...]

    @property
    def num_patches(self) -> int:
        return len(self.corners)

    @property
    def needs_padding(self) -> bool:
        return (self.padded_height, self.padded_width) != (self.height, self.width)


def reflect101_indices(n: int, before: int, after: int) -> np.ndarray:
    """Indices of cv2.BORDER_REFLECT_101 padding of a length-``n`` axis (repeats reflection for tiny axes)."""
    idx = np.arange(-before, n + after)
    if n == 1:
        return np.zeros_like(idx)
    period = 2 * (n - 1)
    idx = np.remainder(idx, period)
    return np.where(idx >= n, period - idx, idx)


def grid_corners(height: int, width: int, spec: PatchSpec = PatchSpec()) -> list[tuple[int, int]]:
    """Top-left corners of the patches of an already padded ``height`` x ``width`` image, in SPAI's order."""
    s = spec.size
    if height < s or width < s:
        raise ValueError(f"image of {height}x{width} must be padded to at least {s}x{s} first")
    corners = [(t, c) for t in range(0, height - s + 1, spec.stride) for c in range(0, width - s + 1, spec.stride)]
    if len(corners) >= spec.minimum_patches:
        return corners
    # torchvision five_crop: TL, TR, BL, BR, centre (centre rounds like torchvision's center_crop)
    ct, cl = int(round((height - s) / 2.0)), int(round((width - s) / 2.0))
    return [(0, 0), (0, width - s), (height - s, 0), (height - s, width - s), (ct, cl)]


def patch_grid(height: int, width: int, spec: PatchSpec = PatchSpec()) -> PatchGrid:
    """The geometry of an original ``height`` x ``width`` image (albumentations PadIfNeeded centring)."""
    s = spec.size
    ph, pw = max(height, s), max(width, s)
    return PatchGrid(height, width, s, (ph - height) // 2, (pw - width) // 2, ph, pw,
                     tuple(grid_corners(ph, pw, spec)))


def count_patches(height: int, width: int, spec: PatchSpec = PatchSpec()) -> int:
    """Number of patches an original ``height`` x ``width`` image yields."""
    return patch_grid(height, width, spec).num_patches


def padding_indices(grid: PatchGrid) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices of the padded frame into the original image."""
    rows = reflect101_indices(grid.height, grid.pad_top, grid.padded_height - grid.height - grid.pad_top)
    cols = reflect101_indices(grid.width, grid.pad_left, grid.padded_width - grid.width - grid.pad_left)
    return rows, cols


def pad_image(image: Any, grid: PatchGrid, channels_first: bool = False) -> Any:
    """H x W x C image (C x H x W with ``channels_first``; numpy or torch) -> its padded frame (the image itself,
    not a copy, when it needs no padding)."""
    if not grid.needs_padding:
        return image
    rows, cols = padding_indices(grid)
    return image[:, rows][:, :, cols] if channels_first else image[rows][:, cols]


def cut_patches(padded: np.ndarray, corners: Sequence[tuple[int, int]], out: np.ndarray) -> np.ndarray:
    """Write the patches at ``corners`` of a padded H x W x C image into ``out`` (N x C x S x S, any dtype:
    values are converted, not scaled) and return it."""
    s = out.shape[-1]
    for i, (t, c) in enumerate(corners):
        out[i] = padded[t:t + s, c:c + s].transpose(2, 0, 1)
    return out
