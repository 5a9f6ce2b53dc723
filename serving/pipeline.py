"""Pure request pipeline of the ``spai`` entry point: bytes -> decoded images -> patch chunks -> encoder ->
padded features + mask -> aggregator -> per-image results.

Nothing here imports Triton: ``serving/models/spai_bls.py`` adapts ``pb_utils`` <-> numpy around these
functions and passes BLS calls in as ``encoder`` / ``aggregator`` callables; tests and benchmarks pass
ONNX Runtime sessions instead. Decoding and patching reuse :mod:`spai.images` and :mod:`spai.patching`.

Ragged outputs: ``patch_attention`` is zero-padded to the longest image of a request (``num_patches[i]``
gives each image's real length); its patches are in :func:`spai.patching.patch_corners` order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from spai.errors import ImageError, ServingError, SPAIError
from spai.images import decode_image
from spai.models.spai_model import pad_patch_features
from spai.patching import PatchSpec, count_patches, iter_patch_chunks

Encoder = Callable[[np.ndarray], np.ndarray]  # N x 3 x 224 x 224 float32 -> N x D float32
# B x L x D float32 + B x L bool -> (B x 1 logits, B x L attention or None)
Aggregator = Callable[[np.ndarray, np.ndarray], "tuple[np.ndarray, np.ndarray | None]"]


@dataclass(frozen=True)
class PipelineSettings:
    """Limits and sizes of the serving pipeline (config.pbtxt ``parameters`` of the ``spai`` model)."""

    max_bytes: int = 64 * 1024 * 1024
    max_pixels: int = 50_000_000
    max_patches: int = 1024  # aggregator engine's L maximum
    encoder_chunk: int = 64  # patches per encoder request (<= encoder max_batch_size)
    aggregator_batch: int = 32  # images per aggregator request (<= aggregator max_batch_size)
    patch: PatchSpec = PatchSpec()

    @classmethod
    def from_parameters(cls, params: dict[str, str]) -> PipelineSettings:
        """Build from Triton string parameters; unknown keys are ignored, bad values raise ServingError."""
        ints = {}
        for key in ("max_bytes", "max_pixels", "max_patches", "encoder_chunk", "aggregator_batch",
                    "patch_size", "patch_stride", "minimum_patches"):
            if key in params:
                try:
                    ints[key] = int(params[key])
                except ValueError as e:
                    raise ServingError(f"config.pbtxt parameter {key}={params[key]!r} is not an integer.") from e
        patch = PatchSpec(ints.pop("patch_size", 224), ints.pop("patch_stride", 224), ints.pop("minimum_patches", 4))
        return cls(patch=patch, **ints)


@dataclass(frozen=True)
class ImageResult:
    """Score of one image: probability (1 = AI-generated), logit, patch count and per-patch attention."""

    probability: float
    logit: float
    num_patches: int
    attention: np.ndarray  # (num_patches,) mean over heads; empty when the aggregator exposes none


def decode_request(blobs: Sequence[bytes], settings: PipelineSettings) -> list[torch.Tensor]:
    """Decode every image of one request (3 x H x W uint8); raises ImageError naming the bad image."""
    images = []
    for i, blob in enumerate(blobs):
        name = "image" if len(blobs) == 1 else f"image[{i}]"
        img = decode_image(bytes(blob), max_pixels=settings.max_pixels, max_bytes=settings.max_bytes, name=name)
        n = count_patches(img.shape[1], img.shape[2], settings.patch)
        if n > settings.max_patches:
            raise ImageError(f"{name}: {img.shape[2]}x{img.shape[1]} yields {n} patches, over the server's limit of "
                             f"{settings.max_patches}; downscale the image or raise max_patches (and the "
                             "aggregator engine's profile).")
        images.append(img)
    return images


def encode_images(images: Sequence[torch.Tensor], settings: PipelineSettings, encoder: Encoder) -> np.ndarray:
    """Patches of all images, in order, through ``encoder`` ``encoder_chunk`` at a time -> N x D."""
    feats = [np.asarray(encoder(np.ascontiguousarray(chunk.numpy(), dtype=np.float32)))
             for chunk in iter_patch_chunks(list(images), settings.patch, settings.encoder_chunk)]
    return np.concatenate(feats) if feats else np.zeros((0, 0), np.float32)


def aggregate_images(features: np.ndarray, counts: Sequence[int], settings: PipelineSettings,
                     aggregator: Aggregator) -> list[ImageResult]:
    """Zero-padded batches of at most ``aggregator_batch`` images through ``aggregator`` -> one result each."""
    results: list[ImageResult] = []
    offsets = np.cumsum([0, *counts])
    for start in range(0, len(counts), settings.aggregator_batch):
        group = list(counts[start:start + settings.aggregator_batch])
        part = torch.from_numpy(features[offsets[start]:offsets[start + len(group)]])
        padded, mask = pad_patch_features(part, group)
        logits, attention = aggregator(padded.numpy(), mask.numpy())
        logits = np.asarray(logits, np.float32).reshape(len(group), -1)[:, 0]
        for i, n in enumerate(group):
            attn = np.zeros(0, np.float32) if attention is None else np.asarray(attention[i], np.float32)[:n]
            results.append(ImageResult(float(sigmoid(logits[i])), float(logits[i]), n, attn))
    return results


def sigmoid(x: float | np.ndarray) -> np.ndarray:
    """Numerically stable logistic function (float32 result like torch.sigmoid)."""
    x = np.asarray(x, np.float32)
    return np.where(x >= 0, 1 / (1 + np.exp(-np.abs(x))), np.exp(-np.abs(x)) / (1 + np.exp(-np.abs(x))))


def score_requests(requests: Sequence[Sequence[bytes]], settings: PipelineSettings, encoder: Encoder,
                   aggregator: Aggregator) -> list[list[ImageResult] | SPAIError]:
    """Score a batch of requests together (patches of all requests share encoder chunks).

    A request whose images cannot be decoded gets its ImageError in its slot; the others are unaffected.
    """
    decoded: list[list[torch.Tensor] | SPAIError] = []
    for blobs in requests:
        try:
            decoded.append(decode_request(blobs, settings) if len(blobs) else _empty_request())
        except SPAIError as e:
            decoded.append(e)
    images = [img for d in decoded if not isinstance(d, SPAIError) for img in d]
    if not images:
        return list(decoded)  # type: ignore[arg-type]
    counts = [count_patches(img.shape[1], img.shape[2], settings.patch) for img in images]
    flat = iter(aggregate_images(encode_images(images, settings, encoder), counts, settings, aggregator))
    return [d if isinstance(d, SPAIError) else [next(flat) for _ in d] for d in decoded]


def _empty_request() -> list[torch.Tensor]:
    raise ImageError("request holds no image; send at least one encoded image in the `image` input.")


def pack_results(results: Sequence[ImageResult], with_attention: bool) -> dict[str, np.ndarray]:
    """Per-request output arrays: probability/logit (B x 1 FP32), num_patches (B x 1 INT32) and, on request,
    patch_attention (B x max L FP32, zero-padded; slice row i to num_patches[i])."""
    out = {
        "probability": np.array([[r.probability] for r in results], np.float32),
        "logit": np.array([[r.logit] for r in results], np.float32),
        "num_patches": np.array([[r.num_patches] for r in results], np.int32),
    }
    if with_attention:
        width = max(len(r.attention) for r in results)
        attn = np.zeros((len(results), width), np.float32)
        for i, r in enumerate(results):
            attn[i, :len(r.attention)] = r.attention
        out["patch_attention"] = attn
    return out
