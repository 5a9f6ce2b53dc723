"""The one inference path: images of any size -> scores, through the deployed split (encoder, aggregator).

paths / bytes / arrays -> decode with limits -> patch grid (once per image) -> patches cut chunk by chunk ->
``encoder`` runner -> zero-padded groups of patch features -> ``aggregator`` runner -> logits -> the model's
:class:`Calibration` (probabilities, and decisions at an operating point) -> one :class:`ImageScore` per image.
Every caller uses it: ``SPAIModel.score_images`` (torch runners), ``spai predict``, the Triton ``spai`` model
(BLS runners), the export comparator and the benchmarks (ONNX Runtime / TensorRT runners). Chunks and groups
follow the runners' declared limits (:class:`spai.runners.Runner`). Pure numpy: no torch, no Triton.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import json
import re
import threading
from collections import deque
from collections.abc import Coroutine, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from spai.errors import CalibrationError, ImageError, SPAIError, detached
from spai.images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, ImageSource, load_image
from spai.patching import PatchGrid, PatchSpec, cut_patches, pad_image, patch_grid
from spai.runners import Feed, Route, Runner
from spai.scores import CSV_FIELDS, ImageScore, flagged_summary, write_scores_csv  # noqa: F401 - re-exported: rows live in spai.scores
from spai.specs import (
    ATTENTION,
    CALIBRATION_FILE,
    DEFAULT_MAX_PATCHES,
    LOGITS,
    PATCH_FEATURES,
    PATCH_MASK,
    PATCHES,
    PATCHES_INPUT,
)

T = TypeVar("T")


@dataclass(frozen=True)
class InputLimits:
    """What an image may be: file size, pixels (decompression bombs) and patches (the aggregator's L)."""

    max_bytes: int = DEFAULT_MAX_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_patches: int | None = None


# What a server accepts from a client (tighter than a local file: a request is held in memory while it is decoded):
# 64 MiB, 50 megapixels, and the aggregator engine's default patch count.
SERVING_LIMITS = InputLimits(64 * 2**20, 50_000_000, DEFAULT_MAX_PATCHES)


def sigmoid(x: float | np.ndarray) -> np.ndarray:
    """logit -> probability: the numerically stable logistic function, computed in float64 and rounded once to
    float32 (the one sigmoid of every scorer)."""
    x = np.asarray(x, np.float64)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(np.float32)


@dataclass(frozen=True)
class OperatingPoint:
    """A named decision rule: flag an image as AI-generated when its probability is >= ``threshold``."""

    name: str
    threshold: float

    def decide(self, probabilities: float | np.ndarray) -> np.ndarray:
        """True where the (calibrated) probability reaches the threshold."""
        return np.asarray(probabilities, np.float64) >= self.threshold


UNCALIBRATED_POINT = OperatingPoint("p0.5", 0.5)


@dataclass(frozen=True)
class Calibration:
    """How the model's raw logits ``z`` become what users act on, the ONE place of it: the probability
    ``sigmoid(z / temperature + bias)`` (temperature or Platt scaling, fitted by ``spai calibrate``) and decisions
    at named operating points (thresholds on that probability). The default instance is an uncalibrated model:
    ``sigmoid(z)``, decided at 0.5. Built from a checkpoint's plain-data ``calibration`` entry with
    :meth:`from_entry`; the fitting is :mod:`spai.train.calibration`."""

    method: str = "none"
    temperature: float = 1.0
    bias: float = 0.0
    operating_points: tuple[OperatingPoint, ...] = (UNCALIBRATED_POINT,)
    default: str = UNCALIBRATED_POINT.name

    def __post_init__(self) -> None:
        if not (np.isfinite(self.temperature) and self.temperature > 0 and np.isfinite(self.bias)):
            raise CalibrationError(f"calibration temperature {self.temperature} / bias {self.bias} must be finite "
                                   "(temperature > 0); re-run `spai calibrate`.")
        names = [p.name for p in self.operating_points]
        if not all(re.fullmatch(r"[A-Za-z0-9_.%+-]+", n) for n in names):
            raise CalibrationError(f"operating point names {names} may hold only letters, digits and _.%+-.")
        if self.default not in names or len(set(names)) != len(names):
            raise CalibrationError(f"calibration default operating point {self.default!r} is not one of {names} "
                                   "(or a name repeats); re-run `spai calibrate`.")

    @property
    def calibrated(self) -> bool:
        return self.method != "none"

    def probability(self, logits: float | np.ndarray) -> np.ndarray:
        """Logits -> probabilities (float32, through the one :func:`sigmoid`); exactly ``sigmoid(z)`` when
        uncalibrated."""
        z = np.asarray(logits, np.float64)
        return sigmoid(z if not self.calibrated else z / self.temperature + self.bias)

    def operating_point(self, name: str | None = None) -> OperatingPoint:
        """The operating point called ``name`` (None or "": the default); :class:`CalibrationError` if unknown."""
        wanted = name or self.default
        for point in self.operating_points:
            if point.name == wanted:
                return point
        raise CalibrationError(f"unknown operating point {wanted!r}; this model has "
                               f"{', '.join(p.name for p in self.operating_points)} (default {self.default}).")

    def decide(self, scores: Sequence[ImageScore], name: str | None = None) -> list[ImageScore]:
        """Set ``decision`` and ``operating_point`` of the successful ``scores`` at operating point ``name``."""
        point = self.operating_point(name)
        for s in scores:
            if not s.error and s.probability is not None:
                s.decision, s.operating_point = bool(point.decide(s.probability)), point.name
        return list(scores)

    @classmethod
    def from_entry(cls, entry: dict[str, Any] | None) -> Calibration:
        """From a checkpoint's ``calibration`` entry (plain data; None: uncalibrated). Operating points that were
        refused when fitting (no threshold) are not usable."""
        if not entry:
            return cls()
        try:
            points = tuple(OperatingPoint(str(p["name"]), float(p["threshold"]))
                           for p in entry.get("operating_points", ()) if p.get("threshold") is not None)
            return cls(str(entry["method"]), float(entry["temperature"]), float(entry.get("bias") or 0.0), points,
                       str(entry["default"]))
        except (KeyError, TypeError, ValueError) as e:
            raise CalibrationError(f"the checkpoint's calibration entry is malformed ({type(e).__name__}: {e}); "
                                   "re-run `spai calibrate`.") from e

    def to_entry(self) -> dict[str, Any]:
        """The plain-data form :meth:`from_entry` reads (what decisions need; the fit's statistics are not kept)."""
        return {"method": self.method, "temperature": self.temperature, "bias": self.bias, "default": self.default,
                "operating_points": [{"name": p.name, "threshold": p.threshold} for p in self.operating_points]}


UNCALIBRATED = Calibration()


def write_export_calibration(calibration: Calibration, directory: str | Path) -> Path | None:
    """Write a calibrated model's :class:`Calibration` beside its exported graphs (where ``spai repository``
    reads it); an uncalibrated model removes a stale file instead. Returns the file written, if any."""
    path = Path(directory) / CALIBRATION_FILE
    if not calibration.calibrated:
        path.unlink(missing_ok=True)
        return None
    path.write_text(json.dumps(calibration.to_entry(), indent=2) + "\n")
    return path


def calibration_from_export(directory: str | Path) -> Calibration:
    """The calibration an export directory carries (uncalibrated when it has no calibration file)."""
    path = Path(directory) / CALIBRATION_FILE
    if not path.is_file():
        return UNCALIBRATED
    try:
        return Calibration.from_entry(json.loads(path.read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CalibrationError(f"{path} is not valid JSON ({e}); re-export the checkpoint.") from e


@dataclass(frozen=True, eq=False)
class PreparedImage:
    """A decoded image in its padded frame (H x W x 3, uint8 or float32 in [0, 1]) with its patch grid."""

    name: str
    pixels: np.ndarray
    grid: PatchGrid


def prepare_image(source: ImageSource, name: str, limits: InputLimits = InputLimits(),
                  spec: PatchSpec = PatchSpec()) -> PreparedImage:
    """Decode with limits and compute the patch grid once; :class:`ImageError` naming the image if it is bad."""
    pixels = load_image(source, name=name, max_pixels=limits.max_pixels, max_bytes=limits.max_bytes)
    grid = patch_grid(pixels.shape[0], pixels.shape[1], spec)
    if limits.max_patches is not None and grid.num_patches > limits.max_patches:
        raise ImageError(f"{name}: {grid.width}x{grid.height} yields {grid.num_patches} patches, over the limit of "
                         f"{limits.max_patches}; downscale the image or raise max_patches (and the aggregator "
                         "engine's profile).")
    return PreparedImage(name, pad_image(pixels, grid), grid)


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


def _features(outputs: Sequence[Feed]) -> np.ndarray:
    return np.concatenate([out[PATCH_FEATURES] for out in outputs]).astype(np.float32, copy=False)


async def infer_in_flight(runner: Runner, feeds: Iterable[Feed], in_flight: int) -> list[Feed]:
    """``runner.infer_async`` on every feed, in order, keeping at most ``in_flight`` (>= 1) calls pending; a feed
    is taken from ``feeds`` (cut) only when a call slot is free. A failure is raised once the calls already
    started have ended (none is left running on its inputs)."""
    pending: deque[asyncio.Future] = deque()
    results: list[Feed] = []
    try:
        for feed in feeds:
            pending.append(asyncio.ensure_future(runner.infer_async(feed)))
            await asyncio.sleep(0)  # let the call start (be submitted) before the next feed is cut
            if len(pending) >= max(1, in_flight):
                results.append(await pending.popleft())
        results += await asyncio.gather(*pending)
    except BaseException:
        await asyncio.gather(*pending, return_exceptions=True)
        raise
    return results


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


def _logits_and_attention(group: list[int], out: Feed) -> tuple[np.ndarray, list[np.ndarray | None]]:
    logits = np.asarray(out[LOGITS], np.float32).reshape(len(group), -1)[:, 0]
    attn = out.get(ATTENTION)
    return logits, [None if attn is None else np.asarray(attn[i, :n], np.float32) for i, n in enumerate(group)]


def source_name(source: ImageSource, index: int) -> str:
    """How an image is named in results and errors: its path, else ``image[index]``."""
    return str(source) if isinstance(source, (str, Path)) else f"image[{index}]"


Prepared = list[PreparedImage] | SPAIError  # one request: its decoded images, or the error of its first bad one
Scored = list[ImageScore] | SPAIError  # one request: its scores, or its error


@dataclass
class Scorer:
    """Everything scoring needs besides the images: the two runners (a :class:`spai.runners.Route`'s), the input
    limits, the patch spec, the model's calibration and how many encoder calls to keep pending (``in_flight``; a
    Triton BLS runner submits them with ``async_exec``).

    One core, :meth:`score_prepared_async` (what the Triton ``spai`` model awaits); the other methods are thin
    synchronous wrappers around it, so every caller scores through the same code. Runners must be entered."""

    encoder: Runner
    aggregator: Runner
    limits: InputLimits = InputLimits()
    spec: PatchSpec = PatchSpec()
    calibration: Calibration = UNCALIBRATED
    in_flight: int = 1

    @classmethod
    def for_route(cls, route: Route, **options: Any) -> Scorer:
        """A scorer over ``route``'s runners (``options``: the other fields)."""
        return cls(route.encoder, route.aggregator, **options)

    def input_limits(self) -> InputLimits:
        """:attr:`limits` with ``max_patches`` no larger than the aggregator's sequence limit (known once the
        aggregator is entered: a TensorRT runner reads it from its engine)."""
        longest = self.aggregator.max_dim(PATCH_FEATURES, 1)
        if longest is None or (self.limits.max_patches is not None and self.limits.max_patches <= longest):
            return self.limits
        return InputLimits(self.limits.max_bytes, self.limits.max_pixels, longest)

    def prepare(self, requests: Sequence[Sequence[ImageSource]]) -> list[Prepared]:
        """Decode every request: its prepared images, or the :class:`ImageError` of its first bad image (a request
        carrying several images fails as a whole; the message names ``image[i]``)."""
        return prepare_requests(requests, self.input_limits(), self.spec)

    async def score_prepared_async(self, prepared: Sequence[Prepared],
                                   operating_points: Sequence[str | None] | None = None) -> list[Scored]:
        """Score the good requests together (their patches share encoder chunks); the bad ones keep their error.
        Each request is decided at its own entry of ``operating_points`` (None: the default); one naming an unknown
        operating point fails alone. Runner failures are not caught: they concern every good request."""
        checked, points = _checked_points(prepared, self.calibration, operating_points)
        good = [img for p in checked if not isinstance(p, SPAIError) for img in p]
        scores = await self._scores(good) if good else []
        it = iter(scores)
        return [p if isinstance(p, SPAIError) else self.calibration.decide([next(it) for _ in p], op)
                for p, op in zip(checked, points)]

    async def _scores(self, images: Sequence[PreparedImage]) -> list[ImageScore]:
        """Encode the patches of all ``images`` (``in_flight`` calls pending), then aggregate: one score each."""
        features = _features(await infer_in_flight(self.encoder, encoder_feeds(self.encoder, images), self.in_flight))
        counts = [img.grid.num_patches for img in images]
        logits, attention = await self._aggregate(features, counts)
        probabilities = self.calibration.probability(logits)
        return [ImageScore(img.name, float(p), float(z), n, attention=a)
                for img, p, z, n, a in zip(images, probabilities, logits, counts, attention)]

    async def _aggregate(self, features: np.ndarray, counts: Sequence[int]
                         ) -> tuple[np.ndarray, list[np.ndarray | None]]:
        logits, attention = [], []
        for group, feed in aggregator_feeds(self.aggregator, features, counts):
            z, a = _logits_and_attention(group, await self.aggregator.infer_async(feed))
            logits.append(z)
            attention += a
        return np.concatenate(logits), attention

    def score_prepared(self, prepared: Sequence[Prepared], operating_points: Sequence[str | None] | None = None
                       ) -> list[Scored]:
        """:meth:`score_prepared_async`, run to completion."""
        return run_sync(self.score_prepared_async(prepared, operating_points))

    def score_requests(self, requests: Sequence[Sequence[ImageSource]],
                       operating_points: Sequence[str | None] | None = None) -> list[Scored]:
        """Score several requests together: per request its scores, or the error of its first bad image."""
        return self.score_prepared(self.prepare(requests), operating_points)

    def score_images(self, images: Sequence[ImageSource], operating_point: str | None = None) -> list[ImageScore]:
        """Score images of any size together; every input is validated first and the first bad one raises."""
        self.calibration.operating_point(operating_point)  # an unknown name fails before any work
        limits = self.input_limits()
        prepared = [prepare_image(img, source_name(img, i), limits, self.spec) for i, img in enumerate(images)]
        if not prepared:
            return []
        return self.score_prepared([prepared], [operating_point])[0]  # type: ignore[return-value]

    def score_patch_groups(self, patches: np.ndarray, counts: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(features N x D, logits B) of ready-cut patches grouped into pseudo-images of ``counts`` patches:
        the same chunking and grouping as images get (the comparator's random-patch check)."""
        step = self.encoder.max_dim(PATCHES, 0) or max(len(patches), 1)
        feeds = ({PATCHES: patches[i:i + step]} for i in range(0, len(patches), step))

        async def features_and_logits() -> tuple[np.ndarray, np.ndarray]:
            feats = _features(await infer_in_flight(self.encoder, feeds, self.in_flight))
            return feats, (await self._aggregate(feats, counts))[0]
        return run_sync(features_and_logits())


def prepare_requests(requests: Sequence[Sequence[ImageSource]], limits: InputLimits = InputLimits(),
                     spec: PatchSpec = PatchSpec()) -> list[Prepared]:
    """:meth:`Scorer.prepare` with explicit limits (what a Triton ``spai`` instance decodes with)."""
    prepared: list[Prepared] = []
    for images in requests:
        try:
            if not len(images):
                raise ImageError("request holds no image; send at least one encoded image in the `image` input.")
            names = ["image"] if len(images) == 1 else [f"image[{i}]" for i in range(len(images))]
            prepared.append([prepare_image(img, n, limits, spec) for img, n in zip(images, names)])
        except SPAIError as e:
            prepared.append(detached(e))
    return prepared


def _checked_points(prepared: Sequence[Prepared], calibration: Calibration,
                    operating_points: Sequence[str | None] | None) -> tuple[list[Prepared], list[str | None]]:
    """Each request's operating point (None: the default); a request naming an unknown one gets its error."""
    points = list(operating_points or [None] * len(prepared))
    return [p if isinstance(p, SPAIError) else _checked_point(p, calibration, op)
            for p, op in zip(prepared, points)], points


def _checked_point(prepared: list[PreparedImage], calibration: Calibration, name: str | None) -> Prepared:
    try:
        calibration.operating_point(name)
    except CalibrationError as e:
        return detached(e)
    return prepared


_LOOPS = threading.local()


def run_sync(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` to completion from synchronous code: on this thread's own event loop (kept, so a call
    costs microseconds), or, where a loop is already running on this thread (a notebook), on a worker thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        loop = getattr(_LOOPS, "loop", None)
        if loop is None or loop.is_closed():
            loop = _LOOPS.loop = asyncio.new_event_loop()
        return loop.run_until_complete(coroutine)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(run_sync, coroutine).result()
