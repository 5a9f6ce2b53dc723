"""ORT fp32 / fp16 parity with PyTorch through the one comparator, on random patches and the sample images."""

from __future__ import annotations

import numpy as np
import pytest

from export.compare import Gates, compare_backends, compare_outputs, enforce, load_images, logit_parity
from export.runners import OrtRunner, TorchRunner
from spai.errors import AccuracyError


def _backends(art):
    return {"ort-fp32": ((OrtRunner(art.graphs.patch_encoder).__enter__(), OrtRunner(art.graphs.aggregator).__enter__()),
                         "fp32"),
            "ort-fp16": ((OrtRunner(art.patch_encoder_fp16).__enter__(), OrtRunner(art.graphs.aggregator).__enter__()),
                         "fp16")}


def test_parity_ort_fp32_and_fp16_pass_gates_on_random_patches(tiny_export):
    model, art = tiny_export
    report = compare_backends(model, _backends(art), n_random=64)
    enforce(report)
    assert report.backends["ort-fp32"]["random_patches"]["max_abs_dprob"] <= 1e-5
    assert report.backends["ort-fp16"]["random_patches"]["max_abs_dprob"] <= 1e-2


def test_parity_on_sample_images_matches_score_images(tiny_export, samples_dir):
    model, art = tiny_export
    paths, labels = load_images(samples_dir)
    assert len(paths) == 18 and labels is not None
    report = compare_backends(model, _backends(art), image_paths=paths[::3], labels=labels[::3], n_random=8)
    enforce(report)
    for name in ("ort-fp32", "ort-fp16"):
        assert report.backends[name]["images"]["decision_flips"] == 0


def test_gates_fail_with_accuracy_error_when_tightened(tiny_export):
    model, art = tiny_export
    report = compare_backends(model, _backends(art), n_random=8, gates=Gates(fp16_max_dprob=0.0))
    assert not report.passed
    with pytest.raises(AccuracyError) as e:
        enforce(report)
    assert e.value.exit_code == 3


def test_torch_runner_matches_model(tiny_export):
    model, _ = tiny_export
    x = np.random.default_rng(1).random((2, 3, 224, 224), dtype=np.float32)
    with TorchRunner(model, "patch_encoder") as r:
        assert r.infer({"patches": x})["patch_features"].shape == (2, model.feature_dim)


def test_compare_outputs_and_logit_parity_basics():
    assert compare_outputs(np.zeros(3), np.full(3, 1e-3), atol=1e-2)
    assert not compare_outputs(np.zeros(3), np.full(3, 1.0), atol=1e-2)
    stats = logit_parity(np.array([-1.0, 0.1, 2.0]), np.array([-1.0, -0.1, 2.0]), labels=np.array([0, 1, 1]))
    assert stats["decision_flips"] == 1 and stats["auc_delta"] is not None
