"""TensorRT engine building (needs TensorRT + GPU) and the full-size model export (slow)."""

from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.mark.trt
def test_engine_from_onnx_builds_and_matches_ort(tiny_export, tmp_path):
    from export.pipeline import engine_profiles, engines_from_onnx
    from export.trt import TrtRunner
    from spai.infer.runners import OrtRunner

    _, art = tiny_export
    cache = tmp_path / "timing.cache"
    profiles = engine_profiles(art.graphs.feature_dim, min_batch=1, opt_batch=4, max_batch=8, max_patches=64)
    engines = engines_from_onnx(art, tmp_path, profiles, timing_cache=cache, fp32=True)
    assert cache.is_file() and engines["patch_encoder"].is_file()
    x = np.random.default_rng(0).integers(0, 256, (5, 3, 224, 224), dtype=np.uint8)
    with TrtRunner(engines["patch_encoder"]) as trt, OrtRunner(art.graphs.patch_encoder) as ort:
        diff = np.abs(trt.infer({"patches": x})["patch_features"] - ort.infer({"patches": x})["patch_features"])
    assert diff.max() < 1e-3


@pytest.mark.slow
def test_full_size_random_weights_export_parity(tmp_path):
    import spai
    from export.fp16 import patch_encoder_fp16
    from export.onnx import onnx_from_torch
    from spai.infer.parity import compare_routes, enforce
    from spai.infer.runners import OrtRunner, Route

    torch.manual_seed(0)
    model = spai.create_model("spai-fusion-b16")
    graphs = onnx_from_torch(model, tmp_path)
    fp16 = patch_encoder_fp16(model, graphs.patch_encoder)
    with OrtRunner(graphs.patch_encoder) as e32, OrtRunner(fp16) as e16, OrtRunner(graphs.aggregator) as agg:
        report = compare_routes(model, [Route("ort-fp32", "fp32", e32, agg), Route("ort-fp16", "fp16", e16, agg)],
                                  n_random=8)
    enforce(report)
