"""The `spai` Triton model's logic that runs without a server: settings, the GPU-output guard, error codes,
response arrays (the server tests run the same code inside tritonserver)."""

from __future__ import annotations

import numpy as np
import pytest

from serving.bls import EntrySettings, error_code, output_array, pack_scores
from spai.errors import ImageError, ServingError
from spai.inference import ImageScore
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
