"""The `spai` Triton model's logic that runs without a server: settings, the GPU-output guard, error codes,
response arrays (the server tests run the same code inside tritonserver)."""

from __future__ import annotations

import numpy as np
import pytest

from serving.bls import (
    EntrySettings,
    calibration_parameters,
    error_code,
    output_array,
    pack_scores,
    with_requested_points,
)
from spai.errors import CalibrationError, ImageError, ServingError
from spai.inference import Calibration, ImageScore, OperatingPoint
from spai.specs import PATCH_FEATURES, PATCHES


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


def test_a_malformed_operating_point_does_not_keep_the_batch_alive_after_the_answers_are_dropped():
    """The error it leaves in the batch must not reference the frame that holds the batch (see
    test_inference's test of prepare_requests): else the batch lives until a full garbage collection."""
    import gc
    import weakref

    gc.collect()
    gc.disable()
    try:
        pixels = np.zeros((1100, 1500, 3), np.uint8)
        alive = weakref.ref(pixels)
        prepared, _ = with_requested_points([[pixels], "req1"], [None, np.array([[b"a"], [b"b"]], object)])
        assert isinstance(prepared[1], CalibrationError)
        del prepared, pixels
        assert alive() is None, "the batch outlives its answers (a reference cycle through the error's frames)"
    finally:
        gc.enable()
