"""Finding 2 of the "one inference path" issue: the comparator must chunk and group by the runners' declared
limits. ORT runners declared at the production TensorRT profile (encoder 256 patches, aggregator 16 images x
1024 patches) stand in for the engines on CPU."""

from __future__ import annotations

from export.compare import compare_backends
from export.runners import OrtRunner
from export.specs import aggregator_spec, patch_encoder_spec, trt_profile


def _profile_limited(art):
    dim = art.graphs.feature_dim
    enc = {k: v[2] for k, v in trt_profile(patch_encoder_spec(dim)).items()}
    agg = {k: v[2] for k, v in trt_profile(aggregator_spec(dim)).items()}
    return {"ort-fp32": ((OrtRunner(art.graphs.patch_encoder, max_shapes=enc).__enter__(),
                          OrtRunner(art.graphs.aggregator, max_shapes=agg).__enter__()), "fp32")}


def test_comparator_respects_production_profile_limits_on_256_random_patches(tiny_export):
    model, art = tiny_export
    report = compare_backends(model, _profile_limited(art), n_random=256)
    assert report.passed, report.failures
