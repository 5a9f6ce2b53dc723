"""The one inference path: images of any size -> scores, through the deployed split (encoder, aggregator).

paths / bytes / arrays -> decode with limits -> patch grid (once per image) -> patches cut chunk by chunk ->
``encoder`` runner -> zero-padded groups of patch features -> ``aggregator`` runner -> logits -> the model's
:class:`Calibration` (probabilities, and decisions at an operating point) -> one :class:`ImageScore` per image.
Every caller uses it: ``SPAIModel.score_images`` (torch runners), ``spai predict``, the Triton ``spai`` model
(BLS runners), the export comparator and the benchmarks (ONNX Runtime / TensorRT runners). Chunks and groups
follow the runners' declared limits (:class:`spai.infer.runners.Runner`). Pure numpy: no torch, no Triton.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections import deque
from collections.abc import Coroutine, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from spai.errors import CalibrationError, ImageError, SPAIError, detached
from spai.infer.feeds import aggregator_feeds, encoder_feeds, logits_and_attention, stacked_features
from spai.infer.images import ImageSource
from spai.infer.prepare import InputLimits, PreparedImage, prepare_image, source_name
from spai.infer.runners import Feed, Route, Runner
from spai.infer.scores import ImageScore
from spai.model.calibration import UNCALIBRATED, Calibration
from spai.model.patching import PatchSpec
from spai.model.specs import (
    PATCH_FEATURES,
    PATCHES,
)

T = TypeVar("T")


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


Prepared = list[PreparedImage] | SPAIError  # one request: its decoded images, or the error of its first bad one
Scored = list[ImageScore] | SPAIError  # one request: its scores, or its error


@dataclass
class Scorer:
    """Everything scoring needs besides the images: the two runners (a :class:`spai.infer.runners.Route`'s), the input
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
        return [p if isinstance(p, SPAIError) else decide_scores(self.calibration, [next(it) for _ in p], op)
                for p, op in zip(checked, points)]

    async def _scores(self, images: Sequence[PreparedImage]) -> list[ImageScore]:
        """Encode the patches of all ``images`` (``in_flight`` calls pending), then aggregate: one score each."""
        feeds = encoder_feeds(self.encoder, images)
        features = stacked_features(await infer_in_flight(self.encoder, feeds, self.in_flight))
        counts = [img.grid.num_patches for img in images]
        logits, attention = await self._aggregate(features, counts)
        probabilities = self.calibration.probability(logits)
        return [ImageScore(img.name, float(p), float(z), n, attention=a)
                for img, p, z, n, a in zip(images, probabilities, logits, counts, attention)]

    async def _aggregate(self, features: np.ndarray, counts: Sequence[int]
                         ) -> tuple[np.ndarray, list[np.ndarray | None]]:
        logits, attention = [], []
        for group, feed in aggregator_feeds(self.aggregator, features, counts):
            z, a = logits_and_attention(group, await self.aggregator.infer_async(feed))
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
            feats = stacked_features(await infer_in_flight(self.encoder, feeds, self.in_flight))
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


def decide_scores(calibration: Calibration, scores: Sequence[ImageScore], name: str | None = None
                  ) -> list[ImageScore]:
    """Set ``decision`` and ``operating_point`` of the successful ``scores`` at operating point ``name``."""
    point = calibration.operating_point(name)
    for s in scores:
        if not s.error and s.probability is not None:
            s.decision, s.operating_point = bool(point.decide(s.probability)), point.name
    return list(scores)
