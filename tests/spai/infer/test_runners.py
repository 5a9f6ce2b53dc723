"""The runner family: declared limits, batching several requests within them, torch and ORT agree."""

from __future__ import annotations

import numpy as np
import pytest

from spai.errors import ExportError
from spai.infer.runners import CPU_CHUNKS, OrtRunner, Runner, TorchRunner, available_cores
from spai.model.specs import PATCH_FEATURES, PATCHES


class Echo(Runner):
    def __init__(self, limits):
        super().__init__(limits)
        self.batches = []

    def _infer(self, feed):
        self.batches.append(len(feed["x"]))
        return {"y": feed["x"] * 2}


def test_infer_many_batches_equal_shapes_within_the_limit():
    runner = Echo({"x": (4,)})
    feeds = [{"x": np.ones((2, 3))}, {"x": np.ones((1, 5))}, {"x": np.full((2, 3), 3.0)}, {"x": np.ones((1, 3))}]
    out = runner.infer_many(feeds)
    assert runner.batches == [4, 1, 1]  # (2+2) rows of width 3, then the width-5 feed, then the last width-3 one
    assert [o["y"].shape for o in out] == [(2, 3), (1, 5), (2, 3), (1, 3)] and out[2]["y"][0, 0] == 6
    with pytest.raises(ExportError, match="outside the declared limits"):
        runner.infer_many([{"x": np.ones((5, 3))}])


def test_limits_are_declared_by_each_runner(tiny_model, tiny_onnx_dir):
    assert TorchRunner(tiny_model, "patch_encoder", 7).max_dim(PATCHES) == 7
    assert TorchRunner(tiny_model, "aggregator").max_dim(PATCH_FEATURES) is None
    with OrtRunner(tiny_onnx_dir / "patch_encoder.onnx") as ort:
        assert ort.max_dim(PATCHES) == CPU_CHUNKS[("ort", "fp32")] and ort.threads is None and available_cores() >= 1
    with OrtRunner(tiny_onnx_dir / "aggregator.onnx", limits={PATCH_FEATURES: (16, 1024, None)}) as ort:
        assert (ort.max_dim(PATCH_FEATURES, 0), ort.max_dim(PATCH_FEATURES, 1)) == (16, 1024)


def test_torch_and_ort_encoders_agree(tiny_model, tiny_onnx_dir):
    x = {PATCHES: np.random.default_rng(1).integers(0, 256, (2, 3, 224, 224), dtype=np.uint8)}  # the graph's dtype
    with TorchRunner(tiny_model, "patch_encoder") as t, \
            OrtRunner(tiny_onnx_dir / "patch_encoder.onnx", limits={PATCHES: (2, 3, 224, 224)}) as o:
        np.testing.assert_allclose(t.infer(x)[PATCH_FEATURES], o.infer(x)[PATCH_FEATURES], atol=1e-4)


def test_missing_onnx_file_is_a_clear_error(tmp_path):
    with pytest.raises(ExportError, match="not found"):
        OrtRunner(tmp_path / "nope.onnx").__enter__()


def test_a_feed_below_the_declared_minimum_is_padded_and_its_outputs_cut_back():
    """A TensorRT profile with a minimum batch above 1 refuses a smaller batch (set_input_shape is False): the runner
    pads the batch axis up to its declared minimum and returns only the real rows."""
    runner = Echo({"x": (8,)})
    runner.minimums = {"x": (4,)}
    out = runner.infer({"x": np.arange(3.0).reshape(1, 3)})
    assert runner.batches == [4] and out["y"].shape == (1, 3) and out["y"].tolist() == [[0.0, 2.0, 4.0]]
    assert runner.infer({"x": np.ones((6, 3))})["y"].shape == (6, 3) and runner.batches == [4, 6]
    with pytest.raises(ExportError, match="below the declared minimum"):
        runner.check_feed({"x": np.ones((2, 3))})
