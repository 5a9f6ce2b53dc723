"""Runner feeds of prepared images: patches cut chunk by chunk for the encoder, zero-padded groups of patch
features for the aggregator, both within the runners' declared limits (:class:`spai.infer.runners.Runner`).
Pure numpy."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence

import numpy as np

from spai.infer.prepare import PreparedImage
from spai.infer.runners import Feed, Runner
from spai.model.patching import cut_patches
from spai.model.specs import ATTENTION, LOGITS, PATCH_FEATURES, PATCH_MASK, PATCHES, PATCHES_INPUT


def patch_chunks(images: Sequence[PreparedImage], chunk: int | None,
                 dtype: np.dtype = PATCHES_INPUT.np_dtype) -> Iterator[np.ndarray]:
    """The patches of all ``images`` in order, ``chunk`` at a time (None: all at once), as N x 3 x S x S
    ``dtype``: floats in [0, 1] (uint8 images are scaled by 1/255) or uint8 (float images are rounded)."""
    pending = [(img, k) for img in images for k in range(img.grid.num_patches)]
    step = chunk or max(len(pending), 1)
    for start in range(0, len(pending), step):
        yield _cut(pending[start:start + step], np.dtype(dtype))


def _cut(pending: list[tuple[PreparedImage, int]], dtype: np.dtype) -> np.ndarray:
    size = pending[0][0].grid.size
    out = np.empty((len(pending), 3, size, size), dtype)
    row = 0
    for _, group in itertools.groupby(pending, key=lambda p: id(p[0])):  # the run of one image's patches
        run = list(group)
        img = run[0][0]
        _fill(out[row:row + len(run)], img.pixels, [img.grid.corners[k] for _, k in run])
        row += len(run)
    return out


def _fill(out: np.ndarray, pixels: np.ndarray, corners: list[tuple[int, int]]) -> None:
    if out.dtype == np.uint8 and pixels.dtype != np.uint8:
        out[...] = np.rint(cut_patches(pixels, corners, np.empty(out.shape, np.float32)) * 255)
        return
    cut_patches(pixels, corners, out)
    if out.dtype != np.uint8 and pixels.dtype == np.uint8:
        np.divide(out, 255, out=out)  # == torch's x.float().div_(255): the scaling the model was trained with


def encoder_feeds(encoder: Runner, images: Sequence[PreparedImage]) -> Iterator[Feed]:
    """The encoder's feeds for the patches of all ``images`` (in order): chunks of its declared batch limit, in
    the dtype it declares, each cut only when it is asked for."""
    for chunk in patch_chunks(images, encoder.max_dim(PATCHES, 0), encoder.input_dtype(PATCHES)):
        yield {PATCHES: chunk}


def stacked_features(outputs: Sequence[Feed]) -> np.ndarray:
    return np.concatenate([out[PATCH_FEATURES] for out in outputs]).astype(np.float32, copy=False)


def aggregator_feeds(aggregator: Runner, features: np.ndarray, counts: Sequence[int]
                     ) -> Iterator[tuple[list[int], Feed]]:
    """(patch counts of the group, feed) for images whose concatenated N x D features split by ``counts``:
    zero-padded groups with a validity mask, as many images a call as the aggregator's limits allow, at least
    as long as its minimum (an engine profile's fewest patches; the extra rows are masked out)."""
    per_call = aggregator.max_dim(PATCH_FEATURES, 0) or max(len(counts), 1)
    shortest = aggregator.min_dim(PATCH_FEATURES, 1)
    offsets = np.cumsum([0, *counts])
    for start in range(0, len(counts), per_call):
        group = list(counts[start:start + per_call])
        length = max(*group, shortest)
        padded = np.zeros((len(group), length, features.shape[1]), np.float32)
        mask = np.zeros((len(group), length), bool)
        for i, n in enumerate(group):
            padded[i, :n] = features[offsets[start + i]:offsets[start + i] + n]
            mask[i, :n] = True
        yield group, {PATCH_FEATURES: padded, PATCH_MASK: mask}


def logits_and_attention(group: list[int], out: Feed) -> tuple[np.ndarray, list[np.ndarray | None]]:
    logits = np.asarray(out[LOGITS], np.float32).reshape(len(group), -1)[:, 0]
    attn = out.get(ATTENTION)
    return logits, [None if attn is None else np.asarray(attn[i, :n], np.float32) for i, n in enumerate(group)]
