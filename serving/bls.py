"""The ``spai`` Triton model's logic besides pb_utils (pure, testable on CPU): its settings from config
parameters, the guard on BLS outputs that are still in GPU memory, the Triton error code each failure answers
with, and the response arrays. The model itself is ``serving/triton_models/spai/1/model.py``.

Ragged outputs: ``patch_attention`` is zero-padded to the longest image of a request (``num_patches[i]``
gives each image's real length); its patches are in :func:`spai.patching.patch_grid` order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from spai.errors import ImageError, ServingError
from spai.inference import ImageScore, InputLimits
from spai.patching import PatchSpec
from spai.runners import Limits
from spai.specs import PATCH_FEATURES, PATCHES, PATCHES_INPUT

INTEGER_PARAMETERS = ("max_bytes", "max_pixels", "max_patches", "encoder_chunk", "aggregator_batch", "patch_size",
                      "patch_stride", "minimum_patches", "in_flight", "threads", "trim_heap_mb")


@dataclass(frozen=True)
class EntrySettings:
    """What config.pbtxt ``parameters`` of the ``spai`` model set (written by :mod:`serving.repository`)."""

    limits: InputLimits = InputLimits(max_bytes=64 * 1024 * 1024, max_pixels=50_000_000, max_patches=1024)
    patch: PatchSpec = PatchSpec()
    encoder_chunk: int = 64  # patches per encoder request (<= the encoder's max_batch_size)
    aggregator_batch: int = 16  # images per aggregator request (<= the aggregator's max_batch_size)
    encoder_model: str = "spai_patch_encoder"
    aggregator_model: str = "spai_aggregator"
    attention: bool = False  # the aggregator has the `attention` output
    in_flight: int = 1  # K: encoder requests one execute keeps pending (BLS async_exec); 1 = one at a time
    threads: int = 1  # OMP/BLAS threads of each instance (decode and cutting are single-threaded)
    trim_heap_mb: int = 0  # malloc_trim after every this many MiB of decoded pixels (0: never)

    @classmethod
    def from_parameters(cls, params: dict[str, str]) -> EntrySettings:
        """Build from Triton string parameters; a bad integer raises :class:`ServingError` naming the key."""
        ints: dict[str, int] = {}
        for key in INTEGER_PARAMETERS:
            if key in params:
                try:
                    ints[key] = int(params[key])
                except ValueError as e:
                    raise ServingError(f"config.pbtxt parameter {key}={params[key]!r} is not an integer.") from e
        base = cls()
        limits = InputLimits(ints.get("max_bytes", base.limits.max_bytes),
                             ints.get("max_pixels", base.limits.max_pixels),
                             ints.get("max_patches", base.limits.max_patches))
        patch = PatchSpec(ints.get("patch_size", 224), ints.get("patch_stride", 224), ints.get("minimum_patches", 4))
        settings = cls(limits, patch, ints.get("encoder_chunk", base.encoder_chunk),
                       ints.get("aggregator_batch", base.aggregator_batch),
                       params.get("encoder_model", base.encoder_model),
                       params.get("aggregator_model", base.aggregator_model),
                       params.get("aggregator_attention", "False").lower() == "true",
                       ints.get("in_flight", base.in_flight), ints.get("threads", base.threads),
                       ints.get("trim_heap_mb", base.trim_heap_mb))
        for key in ("encoder_chunk", "aggregator_batch", "in_flight"):
            if getattr(settings, key) < 1:
                raise ServingError(f"config.pbtxt parameter {key}={getattr(settings, key)} must be at least 1.")
        return settings

    def encoder_dtypes(self) -> dict[str, np.dtype]:
        return {PATCHES: PATCHES_INPUT.np_dtype}

    def encoder_limits(self) -> Limits:
        return {PATCHES: (self.encoder_chunk, *PATCHES_INPUT.shape)}

    def aggregator_limits(self) -> Limits:
        return {PATCH_FEATURES: (self.aggregator_batch, self.limits.max_patches, None)}


def output_array(tensor: Any, model: str) -> np.ndarray:
    """A BLS output tensor as numpy; :class:`ServingError` naming ``model`` when it is still in GPU memory (the
    request asked for CPU outputs: a backend that ignores that must not crash the whole batch in ``as_numpy``)."""
    if tensor is None:
        raise ServingError(f"{model} returned no such output; check the repository's config.pbtxt.")
    if not tensor.is_cpu():
        raise ServingError(f"{model} returned an output in GPU memory although CPU memory was requested "
                           "(preferred_memory); check the model's backend and instance_group.")
    return tensor.as_numpy()


def error_code(error: BaseException) -> str:
    """The Triton error code an error answers with: a bad image is the client's (INVALID_ARG, HTTP 400); any other
    failure is the server's (INTERNAL, HTTP 500: retryable)."""
    return "INVALID_ARG" if isinstance(error, ImageError) else "INTERNAL"


def pack_scores(scores: Sequence[ImageScore], with_attention: bool) -> dict[str, np.ndarray]:
    """Per-request output arrays: probability/logit (B x 1 FP32), num_patches (B x 1 INT32) and, on request,
    patch_attention (B x max L FP32, zero-padded; slice row i to num_patches[i])."""
    out = {"probability": np.array([[s.probability] for s in scores], np.float32),
           "logit": np.array([[s.logit] for s in scores], np.float32),
           "num_patches": np.array([[s.num_patches] for s in scores], np.int32)}
    if with_attention:
        rows = [np.zeros(0, np.float32) if s.attention is None else s.attention for s in scores]
        attn = np.zeros((len(rows), max(len(r) for r in rows)), np.float32)
        for i, r in enumerate(rows):
            attn[i, :len(r)] = r
        out["patch_attention"] = attn
    return out
