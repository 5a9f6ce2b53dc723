"""An offline, deterministic PROXY dataset for smoke-testing training (not a benchmark of real detection).

Every *source* is a smooth random scene (colour field, shapes, soft texture). Its class-0 image is rendered at
full resolution with camera-like sensor noise; its class-1 image is the same scene rendered at half (or quarter)
resolution and decoded back through a random generator-like upsampler (transposed convolution with an uneven
kernel -> checkerboard, nearest + smoothing, or bilinear + a periodic fingerprint). Both images of a source land in
the same split, so the splits share no content. Sizes vary (256-512 px). Written as PNG with ``data.csv`` in
SPAI's format (``image,class,split``).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFilter

from spai.errors import DataError

SIZES = [(256, 256), (256, 320), (320, 256), (384, 384), (384, 512), (512, 384), (448, 448), (256, 512)]
SPLITS = (("train", 0.7), ("val", 0.15), ("test", 0.15))


def render_scene(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A smooth random scene, H x W x 3 float in [0, 255]."""
    base = rng.uniform(0, 255, size=(rng.integers(3, 7), rng.integers(3, 7), 3)).astype(np.uint8)
    im = Image.fromarray(base).resize((width, height), Image.BICUBIC)
    draw = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(3, 9))):
        x0, y0 = rng.uniform(-0.2, 1.0) * width, rng.uniform(-0.2, 1.0) * height
        x1, y1 = x0 + rng.uniform(0.1, 0.6) * width, y0 + rng.uniform(0.1, 0.6) * height
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x1, y1], fill=colour)
    im = im.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.8, 2.5)) * width / 256))
    arr = np.asarray(im, dtype=np.float32)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    freq, angle = rng.uniform(0.02, 0.08), rng.uniform(0, np.pi)
    texture = np.sin(freq * (xx * np.cos(angle) + yy * np.sin(angle)) * width / 256)
    return np.clip(arr + rng.uniform(2, 10) * texture[..., None], 0, 255)


def camera_like(rng: np.random.Generator, scene: np.ndarray) -> np.ndarray:
    """Class 0: sensor-like noise (signal-dependent shot noise + read noise) on the full-resolution scene."""
    shot = rng.normal(size=scene.shape) * np.sqrt(scene / 255.0) * rng.uniform(5.0, 9.0)
    read = rng.normal(size=scene.shape) * rng.uniform(3.0, 6.0)
    return np.clip(scene + shot + read, 0, 255).astype(np.uint8)


def _upsample2x(x: torch.Tensor, kind: str, rng: np.random.Generator) -> torch.Tensor:
    """One generator-like 2x upsampling of a 1 x 3 x h x w tensor."""
    if kind == "transposed":
        kernel = torch.from_numpy(rng.uniform(0.2, 1.8, size=(4, 4)).astype(np.float32))
        kernel = kernel / kernel.sum() * 4  # uneven phases -> checkerboard
        return F.conv_transpose2d(x, kernel.expand(3, 1, 4, 4).contiguous(), stride=2, padding=1, groups=3)
    if kind == "nearest":
        return F.interpolate(x, scale_factor=2, mode="nearest")
    up = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    h, w = up.shape[-2:]
    phase = torch.from_numpy(rng.uniform(-1, 1, size=(3, 2, 2)).astype(np.float32))
    pattern = phase.repeat(1, h // 2 + 1, w // 2 + 1)[:, :h, :w]
    return up + float(rng.uniform(8, 16)) * pattern


def generator_like(rng: np.random.Generator, scene: np.ndarray) -> np.ndarray:
    """Class 1: the scene at 1/2 or 1/4 resolution, decoded back by random 2x upsampling stages."""
    stages = 1 if rng.random() < 0.6 else 2
    h, w = scene.shape[:2]
    small = Image.fromarray(scene.astype(np.uint8)).resize((w >> stages, h >> stages), Image.BILINEAR)
    x = torch.from_numpy(np.asarray(small, dtype=np.float32)).permute(2, 0, 1)[None]
    x = x + torch.from_numpy(rng.normal(size=x.shape).astype(np.float32)) * float(rng.uniform(0.0, 1.0))
    for _ in range(stages):
        x = _upsample2x(x, str(rng.choice(["transposed", "nearest", "bilinear_periodic"])), rng)
    return x[0].permute(1, 2, 0).clamp(0, 255).round().to(torch.uint8).numpy()


def _split_of(position: int, n: int) -> str:
    edge = 0.0
    for name, share in SPLITS:
        edge += share
        if position < round(edge * n):
            return name
    return SPLITS[-1][0]


def make_proxy_dataset(output: str | os.PathLike, n: int = 200, seed: int = 0) -> Path:
    """Write ``n`` sources (2n images) under ``output`` and return the path of ``data.csv``."""
    if n < 7:
        raise DataError(f"--n must be at least 7 sources (got {n}) so that every split gets images.")
    out = Path(output)
    try:
        (out / "images").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"Cannot create {out}: {e.strerror}.") from e
    order = np.random.default_rng(seed).permutation(n)
    rows = []
    for source in range(n):
        rng = np.random.default_rng([seed, source])
        h, w = SIZES[int(rng.integers(len(SIZES)))]
        scene = render_scene(rng, h, w)
        split = _split_of(int(order[source]), n)
        for label, image in ((0, camera_like(rng, scene)), (1, generator_like(rng, scene))):
            name = f"images/src{source:05d}_{'fake' if label else 'real'}.png"
            Image.fromarray(image).save(out / name, compress_level=1)
            rows.append({"image": name, "class": label, "split": split})
    csv_path = out / "data.csv"
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "class", "split"])
        writer.writeheader()
        writer.writerows(rows)
    return csv_path
