"""CPU-side cost of the serving path per patch: decode + patch grid + cut (:meth:`spai.infer.scorer.Scorer.score_requests`,
what the Triton ``spai`` model runs) with the encoder and aggregator replaced by no-op runners, on one core, for
photo-like JPEGs of 1, 3 and 12 MP. ``patches_per_s`` is per core: what one Python-backend instance can feed.
``path``: ``sync`` (:meth:`spai.infer.scorer.Scorer.score_requests`) or ``async`` (what the Triton model's ``execute`` runs:
:meth:`spai.infer.scorer.Scorer.score_prepared_async` with 2 encoder calls in flight, on one event loop).
"""

from __future__ import annotations

import asyncio
import io
import os

import numpy as np
import pytest

from spai.infer.runners import Runner
from spai.model.specs import ATTENTION, LOGITS, PATCH_FEATURES, PATCH_MASK, PATCHES

SIZES = {1: (1152, 864), 3: (2000, 1500), 12: (4000, 3000)}  # megapixels -> width, height


class NoOpRunner(Runner):
    """Answers instantly with zeros of the right shapes, declaring the production limits of the graph."""

    def __init__(self, graph: str, feature_dim: int = 1168) -> None:
        limits = {PATCHES: (64, 3, 224, 224)} if graph == "patch_encoder" else {PATCH_FEATURES: (16, 1024, None)}
        super().__init__(limits)
        self.graph, self.dim, self.name = graph, feature_dim, f"noop:{graph}"

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.graph == "patch_encoder":
            return {PATCH_FEATURES: np.zeros((len(feed[PATCHES]), self.dim), np.float32)}
        mask = feed[PATCH_MASK]
        return {LOGITS: np.zeros((len(mask), 1), np.float32), ATTENTION: np.zeros(mask.shape, np.float32)}


def photo_like_jpeg(width: int, height: int, seed: int = 0) -> bytes:
    """Smooth colour fields with fine noise, JPEG quality 90 (decodes like a photograph of that size)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.empty((height, width, 3), np.float32)
    for c in range(3):
        fx, fy, phase = rng.uniform(1, 6), rng.uniform(1, 6), rng.uniform(0, 2 * np.pi)
        img[..., c] = 128 + 80 * np.sin(2 * np.pi * (fx * x / width + fy * y / height) + phase)
    img += rng.normal(0, 12, (height, width, 1)).astype(np.float32)
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture
def one_core():
    """Pin this process to one core for the case (decode and cutting are single-threaded anyway)."""
    if not hasattr(os, "sched_setaffinity"):
        pytest.skip("os.sched_setaffinity is not available on this platform")
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(before)})
    yield
    os.sched_setaffinity(0, before)


@pytest.mark.parametrize("path", ["sync", "async"])
@pytest.mark.parametrize("megapixels", sorted(SIZES), ids=[f"{mp}MP" for mp in sorted(SIZES)])
def test_serving_cpu_cost_per_patch(benchmark, megapixels: int, path: str, one_core: None) -> None:
    from spai.infer.prepare import SERVING_LIMITS
    from spai.infer.scorer import Scorer

    blob = photo_like_jpeg(*SIZES[megapixels])
    encoder, aggregator = NoOpRunner("patch_encoder"), NoOpRunner("aggregator")
    scorer = Scorer(encoder, aggregator, SERVING_LIMITS, in_flight=2 if path == "async" else 1)
    result: list = []
    loop = asyncio.new_event_loop()

    def step() -> None:
        if path == "sync":
            result.append(scorer.score_requests([[blob]]))
        else:
            result.append(loop.run_until_complete(scorer.score_prepared_async(scorer.prepare([[blob]]))))

    benchmark.group = "serving-cpu-cost"
    try:
        benchmark.pedantic(step, rounds=5, warmup_rounds=1, iterations=1)
    finally:
        loop.close()
    patches = result[-1][0][0].num_patches
    benchmark.extra_info.update(kind="serving_cpu", megapixels=megapixels, patches=patches, cores=1, path=path,
                                jpeg_bytes=len(blob), patches_per_s=patches / benchmark.stats.stats.median)
