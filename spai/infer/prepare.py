"""What an image may be (:class:`InputLimits`) and an image made ready to score: decoded once, its patch grid
computed (:class:`PreparedImage`). Pure numpy."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spai.errors import ImageError
from spai.infer.images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, ImageSource, load_image
from spai.model.patching import PatchGrid, PatchSpec, pad_image, patch_grid
from spai.model.specs import DEFAULT_MAX_PATCHES


@dataclass(frozen=True)
class InputLimits:
    """What an image may be: file size, pixels (decompression bombs) and patches (the aggregator's L)."""

    max_bytes: int = DEFAULT_MAX_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_patches: int | None = None


# What a server accepts from a client (tighter than a local file: a request is held in memory while it is decoded):
# 64 MiB, 50 megapixels, and the aggregator engine's default patch count.
SERVING_LIMITS = InputLimits(64 * 2**20, 50_000_000, DEFAULT_MAX_PATCHES)


@dataclass(frozen=True, eq=False)
class PreparedImage:
    """A decoded image in its padded frame (H x W x 3, uint8 or float32 in [0, 1]) with its patch grid."""

    name: str
    pixels: np.ndarray
    grid: PatchGrid


def prepare_image(source: ImageSource, name: str, limits: InputLimits = InputLimits(),
                  spec: PatchSpec = PatchSpec()) -> PreparedImage:
    """Decode with limits and compute the patch grid once; :class:`ImageError` naming the image if it is bad."""
    pixels = load_image(source, name=name, max_pixels=limits.max_pixels, max_bytes=limits.max_bytes)
    grid = patch_grid(pixels.shape[0], pixels.shape[1], spec)
    if limits.max_patches is not None and grid.num_patches > limits.max_patches:
        raise ImageError(f"{name}: {grid.width}x{grid.height} yields {grid.num_patches} patches, over the limit of "
                         f"{limits.max_patches}; downscale the image or raise max_patches (and the aggregator "
                         "engine's profile).")
    return PreparedImage(name, pad_image(pixels, grid), grid)


def source_name(source: ImageSource, index: int) -> str:
    """How an image is named in results and errors: its path, else ``image[index]``."""
    return str(source) if isinstance(source, (str, Path)) else f"image[{index}]"
