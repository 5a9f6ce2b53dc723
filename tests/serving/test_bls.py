"""The `spai` Triton model's logic that runs without a server: settings, the GPU-output guard, error codes,
response arrays (the server tests run the same code inside tritonserver)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest

from serving.bls import (
    EntrySettings,
    calibration_parameters,
    error_code,
    output_array,
    pack_scores,
    score_entry_batch,
    with_requested_points,
)
from spai.errors import CalibrationError, ImageError, ServingError
from spai.infer.prepare import InputLimits
from spai.infer.runners import Runner
from spai.infer.scores import ImageScore
from spai.model.calibration import Calibration, OperatingPoint
from spai.model.specs import PATCH_FEATURES, PATCHES

ROOT = Path(__file__).resolve().parents[2]


class GpuTensor:
    """What pb_utils hands back for an output left in GPU memory: is_cpu() is False and as_numpy() raises
    (pb_tensor.cc: "Tensor is stored in GPU and cannot be converted to NumPy"). No GPU here to make a real one."""

    def is_cpu(self) -> bool:
        return False

    def as_numpy(self) -> np.ndarray:
        raise RuntimeError("Tensor is stored in GPU and cannot be converted to NumPy.")


class CpuTensor:
    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    def is_cpu(self) -> bool:
        return True

    def as_numpy(self) -> np.ndarray:
        return self.array


def test_gpu_outputs_give_a_serving_error_naming_the_model():
    with pytest.raises(ServingError, match="spai_patch_encoder returned an output in GPU memory"):
        output_array(GpuTensor(), "spai_patch_encoder")
    with pytest.raises(ServingError, match="no such output"):
        output_array(None, "spai_aggregator")
    assert output_array(CpuTensor(np.ones(2)), "m").tolist() == [1.0, 1.0]


def test_a_bad_image_is_invalid_arg_and_anything_else_internal():
    assert error_code(ImageError("image: empty file")) == "INVALID_ARG"
    assert error_code(CalibrationError("unknown operating point 'x'")) == "INVALID_ARG"
    assert error_code(ServingError("spai_patch_encoder failed")) == "INTERNAL"
    assert error_code(RuntimeError("boom")) == "INTERNAL"


def test_settings_from_parameters_declare_the_runner_limits():
    s = EntrySettings.from_parameters({"max_pixels": "100", "patch_stride": "112", "encoder_chunk": "32",
                                       "aggregator_batch": "8", "max_patches": "512", "aggregator_attention": "True"})
    assert s.limits.max_pixels == 100 and s.patch.stride == 112 and s.attention
    assert s.encoder_limits()[PATCHES][0] == 32 and s.aggregator_limits()[PATCH_FEATURES][:2] == (8, 512)
    with pytest.raises(ServingError, match="max_bytes"):
        EntrySettings.from_parameters({"max_bytes": "lots"})


def test_pack_scores_pads_attention():
    rs = [ImageScore("a", 0.5, 0.0, 2, attention=np.array([0.4, 0.6], np.float32)),
          ImageScore("b", 0.7, 0.8, 3, attention=np.ones(3, np.float32) / 3)]
    out = pack_scores(rs, with_attention=True)
    assert out["patch_attention"].shape == (2, 3) and out["patch_attention"][0, 2] == 0
    assert out["num_patches"].dtype == np.int32 and "patch_attention" not in pack_scores(rs, False)


def test_pack_scores_returns_the_decision_and_its_operating_point():
    rs = [ImageScore("a", 0.9, 2.0, 5, decision=True, operating_point="fpr0.01"),
          ImageScore("b", 0.1, -2.0, 5, decision=False, operating_point="fpr0.01")]
    out = pack_scores(rs, False)
    assert out["decision"].dtype == np.bool_ and out["decision"].ravel().tolist() == [True, False]
    assert out["operating_point_name"].ravel().tolist() == [b"fpr0.01", b"fpr0.01"]


def test_the_calibration_rides_in_the_parameters_bit_for_bit():
    cal = Calibration("platt", 0.1 + 0.2, -1 / 3, (OperatingPoint("fpr0.01", 0.9123456789012345),
                                                   OperatingPoint("balanced", 0.5)), "fpr0.01")
    params = {k: str(v) for k, v in calibration_parameters(cal).items()}
    assert EntrySettings.from_parameters(params).calibration == cal
    assert calibration_parameters(Calibration()) == {}
    assert EntrySettings.from_parameters({}).calibration == Calibration()
    with pytest.raises(ServingError, match="calibration parameters are malformed"):
        EntrySettings.from_parameters({**params, "temperature": "-1"})
    with pytest.raises(ServingError, match="calibration parameters are malformed"):
        EntrySettings.from_parameters({**params, "default_operating_point": "fpr0.05"})


def test_a_request_names_one_operating_point_or_fails_alone():
    prepared, points = with_requested_points(["req0", "req1", "req2", ImageError("bad")],
                                             [None, np.array([[b"balanced"]], object),
                                              np.array([[b"a"], [b"b"]], object), np.array([[b"x"]], object)])
    assert points == [None, "balanced", None, "x"]
    assert prepared[:2] == ["req0", "req1"] and isinstance(prepared[2], CalibrationError)
    assert isinstance(prepared[3], ImageError)  # a bad image keeps its own error



@contextlib.contextmanager
def _ort_pair(onnx_dir, settings: EntrySettings):
    from spai.infer.runners import OrtRunner

    with OrtRunner(onnx_dir / "patch_encoder.onnx", limits=settings.encoder_limits()) as encoder, \
            OrtRunner(onnx_dir / "aggregator.onnx", limits=settings.aggregator_limits()) as aggregator:
        yield encoder, aggregator


def _jpeg(w: int, h: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(w).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


class FailingEncoder(Runner):
    def _infer(self, feed):
        raise ServingError("spai_patch_encoder failed: injected")


def test_an_entry_batch_answers_each_request_and_leaves_no_reference_cycles(tiny_onnx_dir):
    """The code of the ``spai`` model's execute: bad requests fail alone, an encoder failure answers the good
    ones, and nothing it leaves needs the cycle collector (an error that kept its frames would keep the whole
    batch, every request's bytes and decoded image, alive until a full collection: under load, RSS ratchets)."""
    import asyncio
    import gc

    settings = EntrySettings(limits=InputLimits(max_patches=64), encoder_chunk=4, in_flight=2)
    good = [[_jpeg(300, 260)], [_jpeg(500, 230)]]
    images = [good[0], [b"junk"], [], good[1], good[0]]
    points = [None, None, None, np.array([[b"a"], [b"b"]], object), np.array([[b"no-such-point"]], object)]
    with _ort_pair(tiny_onnx_dir, settings) as (encoder, aggregator):
        asyncio.run(score_entry_batch(images, points, settings, encoder, aggregator))  # imports, caches
        gc.collect()
        gc.disable()
        try:
            results, pixels = asyncio.run(score_entry_batch(images, points, settings, encoder, aggregator))
            failed, _ = asyncio.run(score_entry_batch(good, [None, None], settings, FailingEncoder(), aggregator))
            answers = [[type(r).__name__ for r in results], [str(f) for f in failed]]
            probability = results[0][0].probability
            del results, failed  # what the model does once it has built the responses
            garbage = gc.collect()
        finally:
            gc.enable()
    assert answers == [["list", "ImageError", "ImageError", "CalibrationError", "CalibrationError"],
                       ["spai_patch_encoder failed: injected"] * 2]
    assert 0.0 <= probability <= 1.0
    assert pixels == 2 * 260 * 300 * 3  # requests 0 and 4 were decoded (4 fails later, at its operating point)
    assert garbage == 0, f"{garbage} objects of the batch were left in reference cycles"


class ProfileEngine(Runner):
    """What Triton's TensorRT backend does with a batch outside the engine's profile: refuse it (set_input_shape
    returns False -> INTERNAL). Computes with an ORT runner of the same graph inside the profile."""

    def __init__(self, inner: Runner, smallest: int, largest: int) -> None:
        super().__init__()
        self.inner, self.smallest, self.largest, self.batches = inner, smallest, largest, []

    def _infer(self, feed):
        batch = len(next(iter(feed.values())))
        self.batches.append(batch)
        if not self.smallest <= batch <= self.largest:
            raise ServingError(f"batch {batch} is outside the engine's profile [{self.smallest}, {self.largest}]")
        return self.inner.infer(feed)


class SettingsRunner(Runner):
    """The `spai` model's BLS runner as model.py builds it from its settings, calling an engine in-process."""

    def __init__(self, engine: Runner, limits, minimums) -> None:
        super().__init__(limits)
        self.engine, self.minimums = engine, minimums

    def _infer(self, feed):
        return self.engine.infer(feed)


def test_a_tail_chunk_below_the_profile_minimum_is_padded_up_to_it(tmp_path, tiny_onnx_dir):
    """The hand-written manifest's encoder profile is [2, 192] patches: a 49-patch image cut in chunks of 48 leaves a
    1-patch tail that the engine would refuse; the `spai` model pads it to the minimum and scores are unchanged."""
    import re
    import shutil

    from PIL import Image

    from serving.repository import ENTRY, build_repository
    from spai.infer.runners import OrtRunner

    art = tmp_path / "export"
    art.mkdir()
    shutil.copy(ROOT / "tests" / "serving" / "data" / "engine.json", art / "engine.json")
    for name in ("patch_encoder.plan", "aggregator.plan"):
        (art / name).write_bytes(b"placeholder")
    data = json.loads((art / "engine.json").read_text())
    data["feature_dim"] = 32  # spai-tiny's D, so that its ONNX graphs stand in for the engines
    for entry in data["engines"].values():
        entry["profile"] = {k: [[*s[:-1], 32] if k == PATCH_FEATURES else s for s in v]
                            for k, v in entry["profile"].items()}
    (art / "engine.json").write_text(json.dumps(data))
    repo = build_repository(art, "trt", tmp_path / "repo", feature_dim=32, attention=True,
                            tensorrt_version="10.13.0.35")
    text = (repo / ENTRY / "config.pbtxt").read_text()
    settings = EntrySettings.from_parameters(dict(re.findall(r'key: "([^"]+)" value \{ string_value: "([^"]*)"', text)))
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (7 * 224, 7 * 224, 3), dtype=np.uint8)  # 7 x 7 = 49 patches
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    with OrtRunner(tiny_onnx_dir / "patch_encoder.onnx", limits={PATCHES: (192, 3, 224, 224)}) as enc, \
            OrtRunner(tiny_onnx_dir / "aggregator.onnx") as agg:
        engine = ProfileEngine(enc, 2, 192)
        encoder = SettingsRunner(engine, settings.encoder_limits(), settings.encoder_minimums())
        aggregator = SettingsRunner(agg, settings.aggregator_limits(), settings.aggregator_minimums())
        results, _ = asyncio.run(score_entry_batch([[buf.getvalue()]], [None], settings, encoder, aggregator))
        assert not isinstance(results[0], Exception), results[0]
        assert engine.batches == [48, 2]  # the 1-patch tail went in padded to the profile's minimum
        reference, _ = asyncio.run(score_entry_batch([[buf.getvalue()]], [None], settings, enc, agg))
    assert abs(results[0][0].probability - reference[0][0].probability) < 1e-6
