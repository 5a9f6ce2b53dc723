"""Any-resolution patching exactly as SPAI: reflect-101 centre padding to 224, a 224 grid with the configured
stride (remainders dropped, row-major), five-crop when the grid has fewer than MINIMUM_PATCHES patches.

Patches are described by their top-left corners so that huge images are cut chunk by chunk: only
``chunk`` patches are ever materialised as floats, whatever the image size.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

PATCH_SIZE = 224


@dataclass(frozen=True)
class PatchSpec:
    """How images are cut: patch size, grid stride and the five-crop threshold."""

    size: int = PATCH_SIZE
    stride: int = PATCH_SIZE
    minimum_patches: int = 4


def reflect101_indices(n: int, before: int, after: int) -> torch.Tensor:
    """Indices of cv2.BORDER_REFLECT_101 padding of a length-``n`` axis (repeats reflection for tiny axes)."""
    idx = torch.arange(-before, n + after)
    if n == 1:
        return torch.zeros_like(idx)
    period = 2 * (n - 1)
    idx = torch.remainder(idx, period)
    return torch.where(idx >= n, period - idx, idx)


def pad_to_minimum(image: torch.Tensor, size: int = PATCH_SIZE) -> torch.Tensor:
    """Centre-pad a C x H x W image to at least ``size`` on each side with reflect-101 (albumentations
    PadIfNeeded defaults: top = (size - H) // 2, the rest at the bottom; same for left/right)."""
    _, h, w = image.shape
    if h >= size and w >= size:
        return image
    pad_h, pad_w = max(size - h, 0), max(size - w, 0)
    rows = reflect101_indices(h, pad_h // 2, pad_h - pad_h // 2)
    cols = reflect101_indices(w, pad_w // 2, pad_w - pad_w // 2)
    return image[:, rows][:, :, cols]


def patch_corners(height: int, width: int, spec: PatchSpec = PatchSpec()) -> list[tuple[int, int]]:
    """Top-left corners of the patches of a padded ``height`` x ``width`` image, in SPAI's order."""
    s = spec.size
    if height < s or width < s:
        raise ValueError(f"image of {height}x{width} must be padded to at least {s}x{s} first")
    tops = range(0, height - s + 1, spec.stride)
    lefts = range(0, width - s + 1, spec.stride)
    corners = [(t, left) for t in tops for left in lefts]
    if len(corners) >= spec.minimum_patches:
        return corners
    # torchvision five_crop: TL, TR, BL, BR, centre (centre rounds like torchvision's center_crop)
    ct, cl = int(round((height - s) / 2.0)), int(round((width - s) / 2.0))
    return [(0, 0), (0, width - s), (height - s, 0), (height - s, width - s), (ct, cl)]


def count_patches(height: int, width: int, spec: PatchSpec = PatchSpec()) -> int:
    """Number of patches an original ``height`` x ``width`` image yields."""
    return len(patch_corners(max(height, spec.size), max(width, spec.size), spec))


def _to_unit_float(x: torch.Tensor) -> torch.Tensor:
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


def crop_patches(image: torch.Tensor, corners: list[tuple[int, int]], size: int = PATCH_SIZE) -> torch.Tensor:
    """Cut ``corners`` out of a padded C x H x W image -> len(corners) x C x size x size floats in [0, 1]."""
    if not corners:
        return torch.empty(0, image.shape[0], size, size)
    return _to_unit_float(torch.stack([image[:, t:t + size, left:left + size] for t, left in corners]))


def patchify(image: torch.Tensor, spec: PatchSpec = PatchSpec()) -> torch.Tensor:
    """One 3 x H x W image (floats in [0, 1] or uint8) -> L x 3 x 224 x 224 floats, exactly as the model cuts it."""
    padded = pad_to_minimum(image, spec.size)
    return crop_patches(padded, patch_corners(padded.shape[1], padded.shape[2], spec), spec.size)


def iter_patch_chunks(images: list[torch.Tensor], spec: PatchSpec, chunk: int) -> Iterator[torch.Tensor]:
    """Patches of several images, concatenated in order and yielded ``chunk`` at a time (bounded memory)."""
    pending: list[tuple[torch.Tensor, tuple[int, int]]] = []
    for image in images:
        padded = pad_to_minimum(image, spec.size)
        for corner in patch_corners(padded.shape[1], padded.shape[2], spec):
            pending.append((padded, corner))
            if len(pending) == chunk:
                yield _crop_pending(pending, spec.size)
                pending = []
    if pending:
        yield _crop_pending(pending, spec.size)


def _crop_pending(pending: list[tuple[torch.Tensor, tuple[int, int]]], size: int) -> torch.Tensor:
    return torch.stack([_to_unit_float(img[:, t:t + size, left:left + size]) for img, (t, left) in pending])
