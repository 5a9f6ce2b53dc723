"""The bad-input corpus: each case writes one file and states the documented handling.

``expect`` is ``"error"`` (an :class:`spai.ImageError` whose message matches ``match``, a row with an error in
the CLIs) or ``"scored"`` (a probability in [0, 1]; ``shape`` is then the decoded H x W x C when it is known).
Everything is generated in a few milliseconds; no case needs network or fixtures.
"""

from __future__ import annotations

import gzip
import io
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

RNG_SEED = 0


@dataclass
class Case:
    name: str
    filename: str
    make: Callable[[], bytes]  # file content
    expect: str  # "error" | "scored"
    match: str = ""  # regex the error message must match (expect == "error")
    shape: tuple[int, int, int] | None = None  # decoded shape (expect == "scored")
    handling: str = ""  # one line for the report
    limits: dict = field(default_factory=dict)  # decode limits used for this case


def _rand(h: int, w: int, seed: int = RNG_SEED) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def good_jpeg(h: int = 300, w: int = 400, seed: int = RNG_SEED) -> bytes:
    return encode(Image.fromarray(_rand(h, w, seed)), "JPEG", quality=90)


def _corrupt(data: bytes, seed: int = 1) -> bytes:
    b = bytearray(data)
    mid = len(b) // 2
    b[mid:mid + 200] = np.random.default_rng(seed).integers(0, 256, 200, dtype=np.uint8).tobytes()
    return bytes(b)


def _corrupt_jpeg() -> bytes:
    """A JPEG whose Huffman table is overwritten with 0xFF bytes: libjpeg stops with 'broken data stream'."""
    b = bytearray(good_jpeg(300, 300))
    i = b.index(b"\xff\xc4")
    b[i + 4:i + 12] = b"\xff" * 8
    return bytes(b)


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_bomb(width: int = 30000, height: int | None = None) -> bytes:
    """A valid PNG header claiming width x height (square by default) RGB with a tiny (deflate-bomb) IDAT: a few
    hundred bytes. The one maker of oversized images for the tests and the load tool."""
    height = width if height is None else height
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    row = b"\x00" + b"\x00" * (3 * width)
    comp = zlib.compressobj(9)
    idat = comp.compress(row * 16) + comp.flush()  # a few rows only; the header is what matters
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def jpeg_huge_header(width: int = 60000, height: int = 60000) -> bytes:
    """A real small JPEG whose SOF0 frame header is patched to claim width x height."""
    data = bytearray(good_jpeg(64, 64))
    i = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, i + 5, height, width)
    return bytes(data)


def _exif_jpeg(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(Image.fromarray(_rand(120, 200)), "JPEG", exif=exif.tobytes())


def _animated_gif() -> bytes:
    frames = [Image.new("RGB", (64, 48), c) for c in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    return buf.getvalue()


def _palette_transparent() -> bytes:
    im = Image.fromarray(_rand(50, 70)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return encode(im, "PNG", transparency=0)


def _minimal_pdf() -> bytes:
    return (b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n2 0 obj << /Type /Pages /Kids [] "
            b"/Count 0 >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n")


def cases() -> list[Case]:
    jpg, png, webp = good_jpeg(), encode(Image.fromarray(_rand(300, 300)), "PNG"), \
        encode(Image.fromarray(_rand(300, 300)), "WEBP", quality=80)
    c = [
        Case("empty file", "empty.jpg", lambda: b"", "error", "empty", handling="refused: 'empty file (0 bytes)'"),
        Case("truncated JPEG", "truncated.jpg", lambda: jpg[: len(jpg) // 2], "error", "truncated or corrupt"),
        Case("corrupt JPEG (Huffman table overwritten)", "corrupt.jpg", _corrupt_jpeg, "error",
             "truncated or corrupt"),
        Case("JPEG cut after the header", "header-only.jpg", lambda: jpg[:300], "error", "truncated|cannot decode"),
        Case("truncated PNG", "truncated.png", lambda: png[: len(png) // 2], "error", "truncated or corrupt"),
        Case("corrupt PNG (IDAT overwritten)", "corrupt.png", lambda: _corrupt(png), "error", "truncated or corrupt"),
        Case("truncated WebP", "truncated.webp", lambda: webp[: len(webp) // 2], "error", "cannot decode|truncated"),
        Case("corrupt WebP payload", "corrupt.webp", lambda: _corrupt(webp), "scored", shape=(300, 300, 3),
             handling="decoded: libwebp conceals a damaged VP8 payload (pixels wrong, score computed)"),
        Case("text file named .png", "notes.png", lambda: b"just some text\n" * 20, "error", "not a recognised image"),
        Case("PDF named .jpg", "document.jpg", _minimal_pdf, "error", "not a recognised image"),
        Case("gzip named .png", "archive.png", lambda: gzip.compress(b"x" * 1000), "error", "not a recognised image"),
        Case("HTML error page named .webp", "page.webp", lambda: b"<html><body>404 Not Found</body></html>",
             "error", "not a recognised image"),
        Case("1x1 image", "one.png", lambda: encode(Image.new("RGB", (1, 1), (9, 99, 199)), "PNG"), "scored",
             shape=(1, 1, 3), handling="scored: reflect-padded to 224, five-crop (5 patches)"),
        Case("1xN image (1 x 3000)", "row.png", lambda: encode(Image.fromarray(_rand(1, 3000)), "PNG"), "scored",
             shape=(1, 3000, 3), handling="scored: padded to 224 high, 13 patches"),
        Case("Nx1 image (2000 x 1)", "column.png", lambda: encode(Image.fromarray(_rand(2000, 1)), "PNG"), "scored",
             shape=(2000, 1, 3)),
        Case("decompression bomb PNG (header 30000x30000)", "bomb.png", png_bomb, "error", "decompression-bomb",
             handling="refused before decoding: 900 MP over the max_pixels limit"),
        Case("JPEG header claiming 60000x60000", "huge-header.jpg", jpeg_huge_header, "error",
             "decompression-bomb", handling="refused before decoding (pixel limit)"),
        Case("image over a configured pixel limit", "limit.png",
             lambda: encode(Image.fromarray(_rand(500, 500)), "PNG"), "error", "decompression-bomb",
             limits={"max_pixels": 100_000}, handling="refused: pixel limits are configurable (max_pixels)"),
        Case("file over a configured byte limit", "bytes.jpg", good_jpeg, "error", "over the limit",
             limits={"max_bytes": 1000}, handling="refused before reading: max_bytes"),
        Case("16-bit greyscale PNG", "grey16.png",
             lambda: encode(Image.fromarray(np.random.default_rng(0).integers(0, 65535, (64, 80), dtype=np.uint16)),
                            "PNG"), "scored", shape=(64, 80, 3), handling="scored: scaled to 8 bit (/257), not clipped"),
        Case("32-bit float TIFF", "float.tiff",
             lambda: encode(Image.fromarray(np.random.default_rng(0).random((40, 50), dtype=np.float32)), "TIFF"),
             "scored", shape=(40, 50, 3), handling="scored: [0,1] floats scaled to 8 bit"),
        Case("CMYK JPEG", "cmyk.jpg", lambda: encode(Image.fromarray(_rand(80, 90)).convert("CMYK"), "JPEG"),
             "scored", shape=(80, 90, 3), handling="scored: converted to RGB"),
        Case("palette PNG with transparency", "palette.png", _palette_transparent, "scored", shape=(50, 70, 3),
             handling="scored: palette expanded, alpha dropped"),
        Case("RGBA PNG", "rgba.png", lambda: encode(Image.fromarray(_rand(60, 60)).convert("RGBA"), "PNG"),
             "scored", shape=(60, 60, 3), handling="scored: alpha dropped (as upstream)"),
        Case("animated GIF", "anim.gif", _animated_gif, "scored", shape=(48, 64, 3),
             handling="scored: first frame only"),
        Case("greyscale JPEG", "grey.jpg", lambda: encode(Image.fromarray(_rand(70, 90)).convert("L"), "JPEG"),
             "scored", shape=(70, 90, 3)),
    ]
    for o in range(1, 9):
        transposed = o >= 5
        c.append(Case(f"EXIF orientation {o}", f"exif{o}.jpg", lambda o=o: _exif_jpeg(o), "scored",
                      shape=(200, 120, 3) if transposed else (120, 200, 3),
                      handling="scored: EXIF orientation applied" + (" (H and W swap)" if transposed else "")))
    return c


def write_cases(directory: Path, selected: list[Case] | None = None) -> dict[str, Path]:
    """Write every case into ``directory``; returns name -> path."""
    directory.mkdir(parents=True, exist_ok=True)
    out = {}
    for case in selected or cases():
        path = directory / case.filename
        path.write_bytes(case.make())
        out[case.name] = path
    return out
