"""A small, deterministic corpus of real-world image encodings for end-to-end checks on any machine.

Photo-like scenes (:func:`spai.data.proxy.render_scene` with camera-like noise) written the ways users' files
come: JPEG and PNG of several sizes (one over 2 MP, non-square ones, one below 224 px on both sides), 16-bit
greyscale PNG, CMYK JPEG, an EXIF-rotated JPEG, RGBA PNG and WebP. The export parity check and the serving tests
score these, so they run without ``../shared/``; the shared samples only add cases where present.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from spai.data.proxy import camera_like, render_scene


def _photo(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(camera_like(rng, render_scene(rng, height, width)))


def _encode(im: Image.Image, fmt: str, **options: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **options)
    return buf.getvalue()


def _exif_rotated(im: Image.Image) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    return _encode(im, "JPEG", quality=92, exif=exif.tobytes())


def _grey16(im: Image.Image) -> bytes:
    grey = np.asarray(im.convert("L"), dtype=np.uint16) * 257
    return _encode(Image.fromarray(grey), "PNG")


# file name -> (width, height, encoder)
CORPUS: dict[str, tuple[int, int, Callable[[Image.Image], bytes]]] = {
    "photo_640x480.jpg": (640, 480, lambda im: _encode(im, "JPEG", quality=90)),
    "wide_2048x1152.jpg": (2048, 1152, lambda im: _encode(im, "JPEG", quality=88)),
    "tall_600x900.png": (600, 900, lambda im: _encode(im, "PNG")),
    "small_300x180.png": (300, 180, lambda im: _encode(im, "PNG")),
    "tiny_90x60.webp": (90, 60, lambda im: _encode(im, "WEBP", quality=90)),
    "grey16_500x400.png": (500, 400, _grey16),
    "cmyk_400x560.jpg": (400, 560, lambda im: _encode(im.convert("CMYK"), "JPEG", quality=90)),
    "exif_rotated_500x320.jpg": (500, 320, _exif_rotated),
    "rgba_260x300.png": (260, 300, lambda im: _encode(im.convert("RGBA"), "PNG")),
}


def write_sample_images(directory: str | Path, seed: int = 0) -> list[Path]:
    """Write :data:`CORPUS` into ``directory`` (same seed, same bytes); returns the paths, sorted by name."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (name, (width, height, encode)) in enumerate(sorted(CORPUS.items())):
        path = out / name
        path.write_bytes(encode(_photo(width, height, seed + i)))
        paths.append(path)
    return paths
