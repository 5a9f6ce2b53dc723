"""The ``spai`` Triton model's logic besides pb_utils (pure, testable on CPU): its settings from config
parameters (limits, and the model's calibration: the same :class:`spai.model.calibration.Calibration` that
``model.score`` applies), the requested operating point, the guard on BLS outputs that are still in GPU memory,
the Triton error code each failure answers with, the scoring of one execute's requests
(:func:`score_entry_batch`) and the response arrays. The model itself is
``serving/triton_models/spai/1/model.py``.

Ragged outputs: ``patch_attention`` is zero-padded to the longest image of a request (``num_patches[i]``
gives each image's real length); its patches are in :func:`spai.model.patching.patch_grid` order.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from spai.errors import CalibrationError, ImageError, ServingError, SPAIError, detached
from spai.infer.prepare import SERVING_LIMITS, InputLimits
from spai.infer.runners import Limits, Runner
from spai.infer.scorer import Scorer, prepare_requests
from spai.infer.scores import ImageScore
from spai.model.calibration import UNCALIBRATED, Calibration
from spai.model.patching import PatchSpec
from spai.model.specs import PATCH_FEATURES, PATCHES, PATCHES_INPUT

# config.pbtxt integer parameter -> the EntrySettings field it sets ("limits.x" / "patch.x": a nested field)
INTEGER_PARAMETERS = {"encoder_chunk": "encoder_chunk", "aggregator_batch": "aggregator_batch",
                      "max_bytes": "limits.max_bytes", "max_pixels": "limits.max_pixels",
                      "max_patches": "limits.max_patches", "patch_size": "patch.size", "patch_stride": "patch.stride",
                      "minimum_patches": "patch.minimum_patches", "in_flight": "in_flight", "threads": "threads",
                      "trim_heap_mb": "trim_heap_mb", "encoder_min_batch": "encoder_min_batch",
                      "aggregator_min_images": "aggregator_min_images",
                      "aggregator_min_patches": "aggregator_min_patches"}
AT_LEAST_ONE = ("encoder_chunk", "aggregator_batch", "in_flight", "encoder_min_batch", "aggregator_min_images",
                "aggregator_min_patches")
DEFAULT_TRIM_HEAP_MB = 64  # the repository's default too (serving.repository.Tuning.entry_trim_heap_mb)
CALIBRATION_PARAMETER = "calibration"  # config.pbtxt parameter: the JSON of Calibration.to_entry()
# What an older `spai repository` wrote instead (refused: the repository must be rebuilt, not served uncalibrated)
LEGACY_CALIBRATION_PARAMETERS = ("calibration_method", "temperature", "bias", "default_operating_point",
                                 "operating_points")


@dataclass(frozen=True)
class EntrySettings:
    """What config.pbtxt ``parameters`` of the ``spai`` model set (written by :mod:`serving.repository`)."""

    limits: InputLimits = SERVING_LIMITS
    patch: PatchSpec = PatchSpec()
    encoder_chunk: int = 64  # patches per encoder request (<= the encoder's max_batch_size)
    aggregator_batch: int = 16  # images per aggregator request (<= the aggregator's max_batch_size)
    encoder_model: str = "spai_patch_encoder"
    aggregator_model: str = "spai_aggregator"
    attention: bool = False  # the aggregator has the `attention` output
    calibration: Calibration = UNCALIBRATED  # probabilities and decisions (parameter `calibration`: JSON)
    in_flight: int = 1  # K: encoder requests one execute keeps pending (BLS async_exec); 1 = one at a time
    threads: int = 1  # OMP/BLAS threads of each instance (decode and cutting are single-threaded)
    trim_heap_mb: int = DEFAULT_TRIM_HEAP_MB  # malloc_trim after every this many MiB of decoded pixels (0: never)
    # The engines' profile minimums (TensorRT refuses a smaller batch): requests are padded up to them
    encoder_min_batch: int = 1
    aggregator_min_images: int = 1
    aggregator_min_patches: int = 1

    @classmethod
    def from_parameters(cls, params: dict[str, str]) -> EntrySettings:
        """Build from Triton string parameters; a bad integer raises :class:`ServingError` naming the key."""
        base = cls()
        fields: dict[str, Any] = {"encoder_model": params.get("encoder_model", base.encoder_model),
                                  "aggregator_model": params.get("aggregator_model", base.aggregator_model),
                                  "attention": params.get("aggregator_attention", "False").lower() == "true",
                                  "calibration": calibration_from_parameters(params)}
        nested: dict[str, dict[str, int]] = {"limits": {}, "patch": {}}
        for key, field in INTEGER_PARAMETERS.items():
            if key not in params:
                continue
            try:
                value = int(params[key])
            except ValueError as e:
                raise ServingError(f"config.pbtxt parameter {key}={params[key]!r} is not an integer.") from e
            outer, _, inner = field.partition(".")
            if inner:
                nested[outer][inner] = value
            else:
                fields[field] = value
        settings = cls(limits=replace(base.limits, **nested["limits"]), patch=replace(base.patch, **nested["patch"]),
                       **fields)
        for key in AT_LEAST_ONE:
            if getattr(settings, key) < 1:
                raise ServingError(f"config.pbtxt parameter {key}={getattr(settings, key)} must be at least 1.")
        return settings

    def to_parameters(self) -> dict[str, str]:
        """The config.pbtxt parameters that :meth:`from_parameters` reads back into these settings."""
        params = {"encoder_model": self.encoder_model, "aggregator_model": self.aggregator_model,
                  "aggregator_attention": str(self.attention)}
        for key, field in INTEGER_PARAMETERS.items():
            outer, _, inner = field.partition(".")
            value = getattr(getattr(self, outer), inner) if inner else getattr(self, field)
            if value is not None:
                params[key] = str(value)
        return {**params, **calibration_parameters(self.calibration)}

    def encoder_dtypes(self) -> dict[str, np.dtype]:
        return {PATCHES: PATCHES_INPUT.np_dtype}

    def encoder_limits(self) -> Limits:
        return {PATCHES: (self.encoder_chunk, *PATCHES_INPUT.shape)}

    def aggregator_limits(self) -> Limits:
        return {PATCH_FEATURES: (self.aggregator_batch, self.limits.max_patches, None)}

    def encoder_minimums(self) -> Limits:
        return {PATCHES: (self.encoder_min_batch,)}

    def aggregator_minimums(self) -> Limits:
        return {PATCH_FEATURES: (self.aggregator_min_images, self.aggregator_min_patches)}


def calibration_parameters(calibration: Calibration) -> dict[str, str]:
    """The config.pbtxt parameter that carries a calibration, :data:`CALIBRATION_PARAMETER`: the JSON of
    :meth:`Calibration.to_entry` (none for an uncalibrated model); JSON writes floats with ``repr``, so they read
    back bit for bit."""
    if not calibration.calibrated:
        return {}
    return {CALIBRATION_PARAMETER: json.dumps(calibration.to_entry(), separators=(",", ":"))}


def calibration_from_parameters(params: dict[str, str]) -> Calibration:
    """Inverse of :func:`calibration_parameters`; :class:`ServingError` naming the parameter if malformed, or if
    the parameters are those of an older repository (:data:`LEGACY_CALIBRATION_PARAMETERS`)."""
    legacy = [key for key in LEGACY_CALIBRATION_PARAMETERS if key in params]
    if legacy:
        raise ServingError(f"config.pbtxt calibration parameters are malformed: {', '.join(legacy)} are those of an "
                           f"older `spai repository` (the calibration is now the one JSON parameter "
                           f"{CALIBRATION_PARAMETER}); rebuild the repository with `spai repository`.")
    if CALIBRATION_PARAMETER not in params:
        return UNCALIBRATED
    text = params[CALIBRATION_PARAMETER]
    try:
        entry = json.loads(text)
        if not isinstance(entry, dict) or "method" not in entry:
            raise ValueError("not a JSON object with the calibration's method, temperature, bias, default and "
                             "operating_points")
        return Calibration.from_entry(entry)
    except (ValueError, AttributeError, CalibrationError) as e:  # json.JSONDecodeError is a ValueError
        raise ServingError(f"config.pbtxt parameter {CALIBRATION_PARAMETER}={text[:200]!r} is malformed "
                           f"({type(e).__name__}: {e}); rebuild the repository with `spai repository`.") from e


def requested_point(values: np.ndarray | None) -> str | None:
    """The operating point a request names in its optional ``operating_point`` input (None: the default)."""
    if values is None:
        return None
    names = {v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in np.asarray(values).ravel()}
    if len(names) > 1:
        raise CalibrationError(f"a request names several operating points {sorted(names)}; send one per request.")
    return next(iter(names), "") or None


def with_requested_points(prepared: list[Any], inputs: Sequence[np.ndarray | None]
                          ) -> tuple[list[Any], list[str | None]]:
    """(prepared requests, the operating point each names): a request whose ``operating_point`` input is
    malformed fails alone (its entry becomes the error); unknown names fail in
    :meth:`spai.infer.scorer.Scorer.score_prepared_async`."""
    points: list[str | None] = []
    for i, values in enumerate(inputs):
        try:
            points.append(requested_point(values))
        except CalibrationError as e:
            points.append(None)
            prepared[i] = prepared[i] if isinstance(prepared[i], BaseException) else detached(e)
    return prepared, points


async def score_entry_batch(images: Sequence[Sequence[bytes]], points: Sequence[np.ndarray | None],
                            settings: EntrySettings, encoder: Runner, aggregator: Runner
                            ) -> tuple[list[list[ImageScore] | SPAIError], int]:
    """What the ``spai`` model's ``execute`` computes for its requests (each request's encoded images and its
    ``operating_point`` input): (per request its scores or its error, bytes of pixels decoded). A bad request
    fails alone; an encoder or aggregator failure answers every good request (:class:`ServingError`: INTERNAL).
    No error keeps the frames that hold the batch (:func:`spai.errors.detached`)."""
    prepared, names = with_requested_points(prepare_requests(images, settings.limits, settings.patch), points)
    pixels = sum(img.pixels.nbytes for p in prepared if not isinstance(p, SPAIError) for img in p)
    try:
        scorer = Scorer(encoder, aggregator, settings.limits, settings.patch, settings.calibration, settings.in_flight)
        return await scorer.score_prepared_async(prepared, names), pixels
    except Exception as e:  # noqa: BLE001 - a failed BLS call must answer the requests, never escape execute
        failure = detached(e) if isinstance(e, SPAIError) else ServingError(f"{type(e).__name__}: {e}")
    return [p if isinstance(p, SPAIError) else failure for p in prepared], pixels


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
    """The Triton error code an error answers with: a bad image or an unknown operating point is the client's
    (INVALID_ARG, HTTP 400); any other failure is the server's (INTERNAL, HTTP 500: retryable)."""
    return "INVALID_ARG" if isinstance(error, (ImageError, CalibrationError)) else "INTERNAL"


def pack_scores(scores: Sequence[ImageScore], with_attention: bool) -> dict[str, np.ndarray]:
    """Per-request output arrays: probability/logit (B x 1 FP32), decision (B x 1 BOOL) and the name of the
    operating point it was made at (B x 1 BYTES), num_patches (B x 1 INT32) and, on request, patch_attention
    (B x max L FP32, zero-padded; slice row i to num_patches[i])."""
    out = {"probability": np.array([[s.probability] for s in scores], np.float32),
           "logit": np.array([[s.logit] for s in scores], np.float32),
           "decision": np.array([[bool(s.decision)] for s in scores], np.bool_),
           "operating_point_name": np.array([[s.operating_point.encode()] for s in scores], np.object_),
           "num_patches": np.array([[s.num_patches] for s in scores], np.int32)}
    if with_attention:
        rows = [np.zeros(0, np.float32) if s.attention is None else s.attention for s in scores]
        attn = np.zeros((len(rows), max(len(r) for r in rows)), np.float32)
        for i, r in enumerate(rows):
            attn[i, :len(r)] = r
        out["patch_attention"] = attn
    return out
