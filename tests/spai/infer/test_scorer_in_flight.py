"""Encoder calls in flight (what the Triton ``spai`` model runs): the async path computes what the synchronous one
does, from the same chunks, keeps at most K calls pending, cuts the next chunk while earlier calls run, and never
leaves a call running when it fails."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from spai.errors import ImageError, ServingError
from spai.infer.feeds import encoder_feeds
from spai.infer.runners import Runner
from spai.infer.scorer import Scorer, infer_in_flight, prepare_requests
from spai.model.specs import ATTENTION, LOGITS, PATCH_FEATURES, PATCH_MASK, PATCHES

D = 8


class SlowRunner(Runner):
    """A deterministic fake graph served by one instance (calls queue, each takes ``delay`` seconds, like BLS
    calls to a model with one instance): features are a function of each patch's pixels, logits the mean of the
    valid features. Records the calls and how many were pending at once."""

    def __init__(self, graph: str, limits: dict, delay: float = 0.01, fail_on: int | None = None) -> None:
        super().__init__(limits)
        self.graph, self.delay, self.fail_on = graph, delay, fail_on
        self.calls: list[tuple] = []
        self.events: list[str] = []
        self.pending = self.most_pending = 0
        self._instance: asyncio.Lock | None = None

    def _infer(self, feed):
        if self.graph == "patch_encoder":
            x = feed[PATCHES].astype(np.float32)
            stats = [x.mean(axis=(1, 2, 3)), x.std(axis=(1, 2, 3)), x[:, 0].mean(axis=(1, 2)), x[:, :, 0].max(axis=(1, 2))]
            return {PATCH_FEATURES: np.stack(stats * 2, axis=1)[:, :D].astype(np.float32)}
        feats, mask = feed[PATCH_FEATURES], feed[PATCH_MASK]
        logits = (feats.sum(axis=(1, 2)) / mask.sum(axis=1))[:, None] / 100
        return {LOGITS: logits.astype(np.float32), ATTENTION: mask / mask.sum(axis=1, keepdims=True)}

    async def _infer_async(self, feed):
        index = len(self.calls)
        self.calls.append({k: v.shape for k, v in feed.items()})
        self.events.append(f"start {index}")
        self.pending += 1
        self.most_pending = max(self.most_pending, self.pending)
        self._instance = self._instance or asyncio.Lock()
        try:
            async with self._instance:
                await asyncio.sleep(self.delay)
            if index == self.fail_on:
                raise ServingError("spai_patch_encoder failed: injected")
            return self._infer(feed)
        finally:
            self.pending -= 1
            self.events.append(f"end {index}")


def _images(shapes):
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (*s, 3), dtype=np.uint8) for s in shapes]


def _runners(chunk: int = 4, **kw):
    return (SlowRunner("patch_encoder", {PATCHES: (chunk, 3, 224, 224)}, **kw),
            SlowRunner("aggregator", {PATCH_FEATURES: (2, None, None)}))


@pytest.mark.parametrize("in_flight", [1, 2, 4])
def test_async_scores_equal_the_synchronous_path(in_flight):
    requests = [[_images([(448, 700)])[0]], [b"junk"], _images([(224, 224), (90, 300)]), _images([(700, 900)])]
    prepared = prepare_requests(requests)
    want = Scorer(*_runners()).score_prepared(prepared)  # one call at a time, through the synchronous wrapper
    enc_a, agg_a = _runners()
    got = asyncio.run(Scorer(enc_a, agg_a, in_flight=in_flight).score_prepared_async(prepared))
    assert isinstance(got[1], ImageError) and got[1] is want[1]
    for w, g in zip([want[0], want[2], want[3]], [got[0], got[2], got[3]]):
        assert [s.probability for s in g] == [s.probability for s in w]
        assert [s.num_patches for s in g] == [s.num_patches for s in w]
    total = sum(s.num_patches for r in (want[0], want[2], want[3]) for s in r)
    chunks = [4] * (total // 4) + ([total % 4] if total % 4 else [])
    assert [c[PATCHES][0] for c in enc_a.calls] == chunks  # the requests share chunks of the encoder's limit
    assert enc_a.most_pending == min(in_flight, len(chunks))


def test_features_are_the_same_whatever_the_number_in_flight():
    images = prepare_requests([_images([(1000, 1300), (224, 500)])])[0]
    enc = _runners(chunk=3)[0]
    want = np.concatenate([enc.infer(feed)[PATCH_FEATURES] for feed in encoder_feeds(enc, images)])  # blocking calls
    for k in (1, 3, 64):
        enc = _runners(chunk=3)[0]
        got = asyncio.run(infer_in_flight(enc, encoder_feeds(enc, images), k))
        np.testing.assert_array_equal(np.concatenate([o[PATCH_FEATURES] for o in got]), want)


def _counting_feeds(n: int, runner: SlowRunner, pending_at_cut: list[int] | None = None):
    for i in range(n):
        runner.events.append(f"cut {i}")
        if pending_at_cut is not None:
            pending_at_cut.append(runner.pending)
        yield {PATCHES: np.full((1, 3, 224, 224), i, np.uint8)}


@pytest.mark.parametrize("in_flight", [1, 2, 3])
def test_the_next_chunk_is_cut_while_earlier_calls_run(in_flight):
    enc = _runners(chunk=1)[0]
    pending_at_cut: list[int] = []
    outs = asyncio.run(infer_in_flight(enc, _counting_feeds(6, enc, pending_at_cut), in_flight))
    assert [o[PATCH_FEATURES][0, 0] for o in outs] == [0, 1, 2, 3, 4, 5]  # in order
    assert enc.most_pending == in_flight
    assert all(p < in_flight for p in pending_at_cut)  # a chunk is cut only when a call slot is free ...
    if in_flight > 1:  # ... while earlier calls still run
        assert all(p >= 1 for p in pending_at_cut[1:]), pending_at_cut
    else:  # one at a time: nothing overlaps
        assert pending_at_cut == [0] * 6


def test_a_failed_call_is_raised_once_the_started_calls_have_ended():
    enc = _runners(chunk=1, fail_on=1)[0]
    enc.delay = 0.02
    with pytest.raises(ServingError, match="injected"):
        asyncio.run(infer_in_flight(enc, _counting_feeds(8, enc), 4))
    started = [e for e in enc.events if e.startswith("start")]
    ended = [e for e in enc.events if e.startswith("end")]
    assert len(started) == len(ended) >= 2 and enc.pending == 0


def test_the_runner_contract_checks_limits_on_async_calls_too():
    from spai.errors import ExportError

    enc = _runners(chunk=2)[0]
    with pytest.raises(ExportError, match="outside the declared limits"):
        asyncio.run(enc.infer_async({PATCHES: np.zeros((3, 3, 224, 224), np.uint8)}))
