"""Finding 2 of the "one inference path" issue: the comparator chunks and groups by the runners' declared limits.
ORT runners declared at the production TensorRT profile (encoder 256 patches, aggregator 16 images x 1024
patches) stand in for the engines on CPU. Before the fix the comparator sent all 58 pseudo-images of 256 random
patches to the aggregator in one call and failed here."""

from __future__ import annotations

import contextlib

from export.pipeline import engine_profiles
from spai.infer.parity import compare_routes, enforce
from spai.infer.runners import OrtRunner, Route
from spai.model.specs import max_shapes


@contextlib.contextmanager
def _profile_limited(art):
    profiles = engine_profiles(art.graphs.feature_dim)
    assert max_shapes(profiles["patch_encoder"])["patches"][0] == 256
    assert max_shapes(profiles["aggregator"])["patch_features"][:2] == (16, 1024)
    with OrtRunner(art.graphs.patch_encoder, limits=max_shapes(profiles["patch_encoder"])) as enc, \
            OrtRunner(art.graphs.aggregator, limits=max_shapes(profiles["aggregator"])) as agg:
        yield [Route("ort-fp32", "fp32", enc, agg)]


def test_comparator_respects_production_profile_limits_on_256_random_patches(tiny_export):
    model, art = tiny_export
    with _profile_limited(art) as backends:
        report = compare_routes(model, backends, n_random=256)
    enforce(report)
    assert report.backends["ort-fp32"]["random_patches"]["n"] == 58


def test_comparator_respects_production_profile_limits_on_images(tiny_export, check_images):
    model, art = tiny_export
    images = check_images * 2  # more images than the aggregator engine takes in one call (16)
    with _profile_limited(art) as backends:
        report = compare_routes(model, backends, image_paths=images, n_random=8)
    enforce(report)
    assert report.backends["ort-fp32"]["images"]["n"] == len(images) > 16
