"""The one inference path: the same scores through any runner pair, chunks and groups by the runners' limits,
per-request errors, one result type and one CSV schema."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
from PIL import Image

from spai.corpus.writers import open_score_writer
from spai.errors import CalibrationError, ExportError, ImageError
from spai.infer.feeds import patch_chunks
from spai.infer.prepare import InputLimits, prepare_image
from spai.infer.runners import OrtRunner, Route, Runner, TorchRunner
from spai.infer.scorer import Scorer, prepare_requests
from spai.infer.scores import CSV_FIELDS, FlaggedCount, ImageScore
from spai.model.calibration import (
    Calibration,
    OperatingPoint,
    calibration_from_export,
    sigmoid,
    write_export_calibration,
)
from spai.model.specs import PATCH_FEATURES, PATCHES


def _png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(w).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


class Recording(Runner):
    """Wraps a runner, declaring other limits and recording every feed's shapes."""

    def __init__(self, inner: Runner, limits: dict) -> None:
        super().__init__(limits)
        self.inner, self.shapes = inner, []

    def _infer(self, feed):
        self.shapes.append({k: v.shape for k, v in feed.items()})
        return self.inner._infer(feed)


def test_ort_runners_match_pytorch_and_bad_requests_fail_alone(tiny_model, tiny_onnx_dir):
    images = [_png(300, 250), _png(500, 470), _png(40, 30)]
    limits = InputLimits(max_pixels=300_000)
    with OrtRunner(tiny_onnx_dir / "patch_encoder.onnx", limits={PATCHES: (3, 3, 224, 224)}) as enc, \
            OrtRunner(tiny_onnx_dir / "aggregator.onnx", limits={PATCH_FEATURES: (2, None, None)}) as agg:
        out = Scorer(enc, agg, limits).score_requests([[images[0]], [b"junk"], [images[1], images[2]],
                                                       [_png(700, 500)], []])
    assert [type(o) for o in (out[1], out[3], out[4])] == [ImageError] * 3
    assert "pixels" in str(out[3]) and "no image" in str(out[4])
    ref = tiny_model.score_images(images)
    got = [out[0][0], *out[2]]
    np.testing.assert_allclose([r.probability for r in got], [r.probability for r in ref], atol=1e-5)
    assert [r.num_patches for r in got] == [r.num_patches for r in ref] == [5, 4, 5]
    np.testing.assert_allclose(got[1].attention, ref[1].attention, atol=1e-5)
    assert [r.image for r in out[2]] == ["image[0]", "image[1]"]


def test_chunks_and_groups_follow_the_runners_limits(tiny_model):
    enc = Recording(TorchRunner(tiny_model, "patch_encoder"), {PATCHES: (4, 3, 224, 224)})
    agg = Recording(TorchRunner(tiny_model, "aggregator"), {PATCH_FEATURES: (2, 8, None)})
    images = [np.zeros((448, 700, 3), np.uint8), np.zeros((224, 224, 3), np.uint8), np.zeros((90, 300, 3), np.uint8)]
    scores = Scorer(enc, agg).score_images(images)
    assert [s.num_patches for s in scores] == [6, 5, 5]
    assert [s[PATCHES][0] for s in enc.shapes] == [4, 4, 4, 4]  # 16 patches, 4 a call
    assert [s[PATCH_FEATURES][:2] for s in agg.shapes] == [(2, 6), (1, 5)]  # 2 images a call, padded to the longest
    with pytest.raises(ImageError, match="yields 15 patches, over the limit of 8"):
        Scorer(enc, agg).score_images([np.zeros((3 * 224, 5 * 224, 3), np.uint8)])


def test_a_runner_refuses_feeds_beyond_its_limits(tiny_model):
    enc = TorchRunner(tiny_model, "patch_encoder", max_batch=2)
    with pytest.raises(ExportError, match="outside the declared limits"):
        enc.infer({PATCHES: np.zeros((3, 3, 224, 224), np.float32)})


def test_patches_are_cut_in_the_encoders_dtype():
    img = prepare_image(np.random.default_rng(0).integers(0, 256, (300, 460, 3), dtype=np.uint8), "x")
    (ints,) = patch_chunks([img], None)  # the spec's dtype: uint8, what the exported graphs take
    (floats,) = patch_chunks([img], None, np.float32)  # what the PyTorch runner takes
    assert floats.dtype == np.float32 and ints.dtype == np.uint8 and floats.shape == (5, 3, 224, 224)
    assert np.array_equal(floats, ints.astype(np.float32) / 255)
    as_float = prepare_image(img.pixels.astype(np.float32) / 255, "y")
    assert np.array_equal(next(patch_chunks([as_float], None, np.uint8)), ints)


def test_one_csv_schema_for_every_scorer(tmp_path):
    rows = [ImageScore("a.png", 0.25, -1.0986, 5, 12.5, decision=False, operating_point="fpr0.01"),
            ImageScore("b.png", latency_ms=1.0, error="bad image")]
    path = tmp_path / "s.csv"
    with open_score_writer(path, resume=False) as writer:
        for row in rows:
            writer.write(row)
    got = list(csv.DictReader(open(path)))
    assert list(got[0]) == list(CSV_FIELDS)
    assert got[0]["probability"] == "0.250000" and got[0]["num_patches"] == "5"
    assert got[0]["decision"] == "0" and got[0]["operating_point"] == "fpr0.01"
    assert got[1]["probability"] == "" and got[1]["error"] == "bad image" and got[1]["decision"] == ""


CALIBRATED = Calibration("platt", 0.25, 0.5, (OperatingPoint("fpr0.05", 0.7), OperatingPoint("balanced", 0.3)),
                         "fpr0.05")


def test_calibration_makes_the_probability_and_the_decision_in_one_place(tiny_model):
    images = [_png(300, 250), _png(500, 470), _png(260, 240)]
    enc, agg = TorchRunner(tiny_model, "patch_encoder"), TorchRunner(tiny_model, "aggregator")
    raw = Scorer(enc, agg).score_images(images)
    assert [r.operating_point for r in raw] == ["p0.5"] * 3
    assert [r.decision for r in raw] == [r.probability >= 0.5 for r in raw]
    calibrated = Scorer(enc, agg, calibration=CALIBRATED)
    cal = calibrated.score_images(images)
    assert [r.logit for r in cal] == [r.logit for r in raw]  # the logit stays raw
    want = sigmoid(np.array([r.logit for r in raw], np.float64) / 0.25 + 0.5)
    assert [r.probability for r in cal] == want.tolist()
    assert [r.decision for r in cal] == (want >= 0.7).tolist() and cal[0].operating_point == "fpr0.05"
    balanced = calibrated.score_images(images, "balanced")
    assert [r.decision for r in balanced] == (want >= 0.3).tolist()
    count = FlaggedCount()
    for row in balanced:
        count.add(row)
    assert count.summary() == f"flagged {int((want >= 0.3).sum())} of 3 scored images as AI-generated " \
                              "(operating point balanced)"
    with pytest.raises(CalibrationError, match="unknown operating point 'fpr0.01'"):
        calibrated.score_images(images, "fpr0.01")


def test_each_request_is_decided_at_its_own_operating_point(tiny_model):
    enc, agg = TorchRunner(tiny_model, "patch_encoder"), TorchRunner(tiny_model, "aggregator")
    image = _png(300, 250)
    out = Scorer(enc, agg, calibration=CALIBRATED).score_requests([[image], [image], [image], [b"junk"]],
                                                                  [None, "balanced", "nope", "balanced"])
    assert out[0][0].operating_point == "fpr0.05" and out[1][0].operating_point == "balanced"
    assert out[0][0].probability == pytest.approx(out[1][0].probability, abs=1e-6)
    assert isinstance(out[2], CalibrationError) and isinstance(out[3], ImageError)


def test_an_export_carries_the_calibration_as_data(tmp_path):
    assert write_export_calibration(CALIBRATED, tmp_path) == tmp_path / "calibration.json"
    assert calibration_from_export(tmp_path) == CALIBRATED  # floats round-trip exactly
    assert write_export_calibration(Calibration(), tmp_path) is None  # uncalibrated: a stale file goes
    assert not (tmp_path / "calibration.json").exists() and calibration_from_export(tmp_path) == Calibration()


def test_sigmoid_is_stable_and_float32():
    p = sigmoid(np.array([-1000.0, 0.0, 1000.0]))
    assert p.dtype == np.float32 and p.tolist() == [0.0, 0.5, 1.0]


def test_a_bad_request_does_not_keep_its_batch_alive_after_the_results_are_dropped():
    """A kept error must not hold the frames it was raised in: their locals are the whole batch (every request's
    bytes, every decoded image), and the error -> traceback -> frame -> results -> error cycle would keep them
    until a full garbage collection, which a server under load runs rarely (its RSS ratchets up)."""
    import gc
    import weakref

    gc.collect()
    gc.disable()
    try:
        prepared = prepare_requests([[_png(300, 260)], [b"junk"]])
        assert isinstance(prepared[1], ImageError)
        pixels = weakref.ref(prepared[0][0].pixels)
        del prepared
        assert pixels() is None, "the good request's decoded image outlives the results (a reference cycle)"
    finally:
        gc.enable()


def test_the_synchronous_wrappers_work_inside_a_running_event_loop(tiny_model):
    """A notebook runs an event loop on the main thread: score_images must not fail with "this event loop is
    already running" (the wrapper then runs the core on a worker thread)."""
    import asyncio

    scorer = Scorer(TorchRunner(tiny_model, "patch_encoder"), TorchRunner(tiny_model, "aggregator"))
    image = _png(300, 250)
    want = scorer.score_images([image])[0].probability

    async def inside_a_loop() -> float | None:
        return scorer.score_images([image])[0].probability

    assert asyncio.run(inside_a_loop()) == want


def test_a_route_enters_and_leaves_both_runners():
    class Tracked(Runner):
        def __init__(self, log: list, name: str) -> None:
            super().__init__()
            self.log, self.name = log, name

        def __enter__(self):
            self.log.append(f"enter {self.name}")
            return self

        def __exit__(self, *exc):
            self.log.append(f"exit {self.name}")

    log: list[str] = []
    with Route("x-fp32", "fp32", Tracked(log, "enc"), Tracked(log, "agg")) as route:
        assert route.name == "x-fp32" and log == ["enter enc", "enter agg"]
    assert log == ["enter enc", "enter agg", "exit agg", "exit enc"]
