"""Malformed and unusual images for the serving tests, made cheaply in memory."""

from __future__ import annotations

import io

import numpy as np
from helpers import png_bomb
from PIL import Image


def _save(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def rgb(size=(300, 260), seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def jpeg(size=(300, 260)) -> bytes:
    return _save(rgb(size), "JPEG", quality=90)


def valid_oddities() -> dict[str, bytes]:
    """Images that must be scored: tiny, 16-bit, CMYK, animated, huge EXIF."""
    grey16 = Image.fromarray((np.arange(300 * 250, dtype=np.uint16).reshape(250, 300) * 7).astype(np.uint16))
    frames = [rgb((240, 230), s).convert("P") for s in range(3)]
    exif = Image.Exif()
    exif[0x010E] = "x" * 60000  # ImageDescription: ~60 kB of EXIF
    exif[0x0112] = 6  # orientation: rotate
    return {
        "one_pixel_png": _save(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG"),
        "png16": _save(grey16, "PNG"),
        "cmyk_jpeg": _save(rgb().convert("CMYK"), "JPEG"),
        "animated_gif": _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0),
        "huge_exif_jpeg": _save(rgb(), "JPEG", exif=exif),
        "webp": _save(rgb(), "WEBP"),
        "tiff": _save(rgb(), "TIFF"),
        "bmp": _save(rgb(), "BMP"),
    }


def invalid_inputs() -> dict[str, bytes]:
    """Inputs that must get a per-request error."""
    return {"empty": b"", "truncated_jpeg": jpeg()[:600], "text": b"hello, this is not an image\n" * 10,
            "png_bomb": png_bomb()}
