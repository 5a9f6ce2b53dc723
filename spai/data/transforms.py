"""SPAI's training augmentation (upstream order, albumentations semantics) with torchvision/PIL/numpy.

Each view: RandomResizedCrop(224, scale MIN..MAX_CROP_AREA, ratio 3/4..4/3, bilinear) -> h-flip -> v-flip ->
Rotate(up to ROTATION_DEGREES, crop_border: largest axis-aligned rectangle) -> Resize(224) -> GaussianBlur ->
GaussNoise(var 10..50 on the 0-255 scale) -> JPEG(quality 50..100), each with its probability from ``cfg.AUG``.
``DATA.AUGMENTED_VIEWS`` independent views are concatenated side by side (3 x 224 x 224V, uint8).

Randomness comes only from the ``torch.Generator`` passed in, so a (seed, epoch, index) triple always gives the
same views whatever the worker count (this is what makes resumed runs reproduce uninterrupted ones).
"""

from __future__ import annotations

import math

import torch
import torchvision.transforms.v2.functional as TF
from torchvision.io import decode_jpeg, encode_jpeg

from spai.model.config import Config


def _uniform(gen: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=gen))


def _chance(gen: torch.Generator, prob: float) -> bool:
    return prob > 0 and float(torch.rand((), generator=gen)) < prob


def random_resized_crop_box(height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float],
                            gen: torch.Generator) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a crop with area fraction in ``scale`` and aspect in ``ratio`` (torchvision's
    algorithm: 10 tries, then a centre crop clamped to the ratio range)."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * _uniform(gen, *scale)
        aspect = math.exp(_uniform(gen, *log_ratio))
        w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (), generator=gen))
            left = int(torch.randint(0, width - w + 1, (), generator=gen))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def rotated_inner_size(height: int, width: int, degrees: float) -> tuple[int, int]:
    """Largest axis-aligned rectangle inside a ``height`` x ``width`` image rotated by ``degrees``
    (albumentations' ``crop_border``)."""
    angle = math.radians(abs(degrees)) % math.pi
    if angle > math.pi / 2:
        angle = math.pi - angle
    sin_a, cos_a = math.sin(angle), math.cos(angle)
    long_side, short_side = max(width, height), min(width, height)
    if short_side <= 2.0 * sin_a * cos_a * long_side or abs(sin_a - cos_a) < 1e-10:
        x = 0.5 * short_side
        wr, hr = (x / sin_a, x / cos_a) if width >= height else (x / cos_a, x / sin_a)
    else:
        cos_2a = cos_a * cos_a - sin_a * sin_a
        wr, hr = (width * cos_a - height * sin_a) / cos_2a, (height * cos_a - width * sin_a) / cos_2a
    return max(1, int(hr)), max(1, int(wr))


def rotate_crop_border(image: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate (bilinear) and keep the largest valid centred rectangle."""
    _, h, w = image.shape
    rotated = TF.rotate(image, degrees, interpolation=TF.InterpolationMode.BILINEAR)
    ih, iw = rotated_inner_size(h, w, degrees)
    return TF.center_crop(rotated, [min(ih, h), min(iw, w)])


class TrainTransform:
    """One call = ``views`` augmented 224 x 224 views of a uint8 image, side by side (3 x 224 x 224V uint8)."""

    def __init__(self, cfg: Config) -> None:
        self.aug = cfg.AUG
        self.size = int(cfg.DATA.IMG_SIZE)
        self.views = int(cfg.DATA.AUGMENTED_VIEWS)

    def __call__(self, image: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return torch.cat([self.view(image, gen) for _ in range(self.views)], dim=2)

    def view(self, image: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """One augmented ``size`` x ``size`` view (uint8)."""
        a, s = self.aug, self.size
        image = pad_to_size(image, s) if a.MIN_CROP_AREA == a.MAX_CROP_AREA else image
        if a.MIN_CROP_AREA != a.MAX_CROP_AREA:
            top, left, h, w = random_resized_crop_box(image.shape[1], image.shape[2],
                                                      (a.MIN_CROP_AREA, a.MAX_CROP_AREA), (3 / 4, 4 / 3), gen)
        else:
            top = int(torch.randint(0, image.shape[1] - s + 1, (), generator=gen))
            left, h, w = int(torch.randint(0, image.shape[2] - s + 1, (), generator=gen)), s, s
        x = image[:, top:top + h, left:left + w]
        if _chance(gen, a.HORIZONTAL_FLIP_PROB):
            x = x.flip(2)
        if _chance(gen, a.VERTICAL_FLIP_PROB):
            x = x.flip(1)
        if _chance(gen, a.ROTATION_PROB):
            x = rotate_crop_border(x, _uniform(gen, -a.ROTATION_DEGREES, a.ROTATION_DEGREES))
        x = TF.resize(x, [s, s], interpolation=TF.InterpolationMode.BILINEAR, antialias=False)
        return self.degrade(x.contiguous(), gen)

    def degrade(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Gaussian blur, Gaussian noise and JPEG re-compression, each with its probability."""
        a = self.aug
        if _chance(gen, a.GAUSSIAN_BLUR_PROB):
            lo, hi = (int(v) for v in a.GAUSSIAN_BLUR_LIMIT)
            k = int(torch.randint(lo // 2, hi // 2 + 1, (), generator=gen)) * 2 + 1
            sigma = _uniform(gen, *a.GAUSSIAN_BLUR_SIGMA)
            x = TF.gaussian_blur(x.float(), [k, k], [sigma, sigma]).round_().clamp_(0, 255).to(torch.uint8)
        if _chance(gen, a.GAUSSIAN_NOISE_PROB):
            std = math.sqrt(_uniform(gen, *a.GAUSSIAN_NOISE_VAR))
            noise = torch.randn(x.shape, generator=gen) * std
            x = (x.float() + noise).round_().clamp_(0, 255).to(torch.uint8)
        if _chance(gen, a.JPEG_COMPRESSION_PROB):
            quality = int(torch.randint(a.JPEG_MIN_QUALITY, a.JPEG_MAX_QUALITY + 1, (), generator=gen))
            x = decode_jpeg(encode_jpeg(x, quality=quality))
        return x


def pad_to_size(image: torch.Tensor, size: int) -> torch.Tensor:
    """Reflect-101 centre padding of a C x H x W tensor to at least ``size`` x ``size`` (PadIfNeeded)."""
    from spai.model.patching import PatchSpec, pad_image, patch_grid

    return pad_image(image, patch_grid(image.shape[1], image.shape[2], PatchSpec(size)), channels_first=True)


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """The generator of one sample's augmentation in one epoch."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + int(epoch)) * 10_000_019 + int(index))
