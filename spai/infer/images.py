"""Decode images of any format, mode and size to RGB uint8 arrays (H x W x 3), with limits. Pure numpy + PIL.

Handling (documented in the README): EXIF orientation applied; every PIL mode to RGB (16-bit and 32-bit integer
greyscale scaled down to 8 bit, not clipped; alpha dropped as upstream's ``convert("RGB")`` does); animated
images use their first frame; files over ``max_bytes`` or images over ``max_pixels`` are refused before decoding
(decompression bombs); unreadable data raises :class:`ImageError` naming the source.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Any, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from spai.errors import ImageError

DEFAULT_MAX_PIXELS = 178_956_970  # 2x PIL's bomb warning threshold
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".jfif", ".ppm", ".pgm"}

ImageSource = Union[str, os.PathLike, bytes, Image.Image, np.ndarray, Any]  # Any: a torch.Tensor


def _open(source: str | os.PathLike | bytes, max_bytes: int, name: str,
          max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    if isinstance(source, bytes):
        data = source
    else:
        path = Path(source)
        try:
            size = path.stat().st_size
        except OSError as e:
            raise ImageError(f"{name}: cannot read file ({e.strerror}).") from e
        if path.is_dir():
            raise ImageError(f"{name}: is a directory, not an image file.")
        if size > max_bytes:
            raise ImageError(f"{name}: file is {size} bytes, over the limit of {max_bytes}; raise the limit "
                             "(--max-bytes / DATA.MAX_IMAGE_BYTES) if this image is legitimate.")
        data = path.read_bytes()
    if len(data) == 0:
        raise ImageError(f"{name}: empty file (0 bytes).")
    if len(data) > max_bytes:
        raise ImageError(f"{name}: {len(data)} bytes, over the limit of {max_bytes}.")
    if Image.MAX_IMAGE_PIXELS and max_pixels > 2 * Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = max_pixels // 2 + 1  # PIL refuses > 2x this on open: let our limit decide
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data))
    except UnidentifiedImageError as e:
        raise ImageError(f"{name}: not a recognised image format (is it really an image?).") from e
    except Image.DecompressionBombError as e:
        raise ImageError(f"{name}: {e} (decompression-bomb guard); raise --max-pixels / DATA.MAX_IMAGE_PIXELS "
                         "to allow it.") from e
    except (OSError, ValueError) as e:
        raise ImageError(f"{name}: cannot decode image ({e}).") from e


def _to_rgb_array(im: Image.Image) -> np.ndarray:
    """Any PIL mode -> H x W x 3 uint8."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(im, dtype=np.int64)
        scale = 257.0 if (im.mode.startswith("I;16") or arr.max(initial=0) > 255) else 1.0
        grey = np.clip(np.round(arr / scale), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if im.mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        hi = 1.0 if arr.max(initial=0) <= 1.0 else 255.0
        grey = np.clip(np.round(arr / hi * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    # np.asarray, not np.array: PIL's array interface already hands over a fresh buffer (no second copy)
    return np.asarray(im if im.mode == "RGB" else im.convert("RGB"), dtype=np.uint8)


def decode_image(source: str | os.PathLike | bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                 max_bytes: int = DEFAULT_MAX_BYTES, name: str | None = None) -> np.ndarray:
    """Encoded image (path or bytes) -> H x W x 3 uint8 RGB array (PIL's own buffer layout: no transpose)."""
    name = name or (str(source) if not isinstance(source, bytes) else "image bytes")
    im = _open(source, max_bytes, name, max_pixels)
    width, height = im.size
    if width * height > max_pixels:
        raise ImageError(f"{name}: {width}x{height} = {width * height} pixels, over the limit of {max_pixels} "
                         "(decompression-bomb guard); raise --max-pixels / DATA.MAX_IMAGE_PIXELS to allow it.")
    if width < 1 or height < 1:
        raise ImageError(f"{name}: image has no pixels ({width}x{height}).")
    try:
        im.seek(0)
        ImageOps.exif_transpose(im, in_place=True)  # in place: no full-size copy of a decoded image we own
        return _to_rgb_array(im)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ImageError(f"{name}: image data is truncated or corrupt ({e}).") from e
    finally:
        im.close()  # free the decoded PIL image: only the array is kept (peak memory: see docs/reliability.md)


def load_image(image: ImageSource, *, name: str | None = None, **limits: Any) -> np.ndarray:
    """Path, bytes, PIL image, H x W x 3 / 3 x H x W array or tensor -> H x W x 3 (uint8, or float32 in [0, 1]).

    ``name`` names encoded images in errors (default: the path). Arrays are not copied when they already have
    that layout (a 3 x H x W one becomes a transposed view).
    """
    if isinstance(image, (str, os.PathLike, bytes)):
        return decode_image(image, name=name, **limits)
    if isinstance(image, Image.Image):
        return _to_rgb_array(ImageOps.exif_transpose(image) or image)
    array = np.asarray(image.detach().cpu().numpy() if hasattr(image, "detach") else image)  # torch without torch
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3:
        raise ImageError(f"expected an image of shape 3 x H x W or H x W x 3, got {tuple(array.shape)}.")
    if array.shape[0] in (1, 3) or array.shape[-1] not in (1, 3, 4):
        array = array.transpose(1, 2, 0)  # channels first (torch's layout) -> channels last
    array = array[:, :, :3]
    if array.shape[2] == 1:
        array = np.broadcast_to(array, (*array.shape[:2], 3))
    if array.shape[2] != 3:
        raise ImageError(f"expected 3 colour channels, got an array of shape {tuple(np.shape(image))}.")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ImageError(f"image array has no pixels (shape {tuple(np.shape(image))}).")
    return array if array.dtype == np.uint8 else _unit_float(array)


def _unit_float(array: np.ndarray) -> np.ndarray:
    """A float image as float32, refused unless every value is finite and in [0, 1]."""
    array = array.astype(np.float32, copy=False)
    if not np.isfinite(array).all():
        raise ImageError("image array contains NaN or infinite values.")
    if array.min() < 0 or array.max() > 1:
        raise ImageError("float image arrays must hold values in [0, 1] (divide uint8 data by 255).")
    return array


def list_images(directory: str | os.PathLike) -> list[Path]:
    """Image files directly in ``directory`` (by extension), sorted by name."""
    d = Path(directory)
    if not d.is_dir():
        raise ImageError(f"{d} is not a directory.")
    return sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
