"""ORT fp32 / fp16 parity with PyTorch through the one comparator, on random patches, the generated images and
the shared samples where present: logits, then decisions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from export.compare import load_images
from spai.errors import AccuracyError
from spai.infer.parity import Gates, compare_outputs, compare_routes, enforce, logit_parity
from spai.infer.runners import OrtRunner, Route, TorchRunner

SAMPLES_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "samples"


def _backends(art):
    agg = OrtRunner(art.graphs.aggregator).__enter__()
    return [Route("ort-fp32", "fp32", OrtRunner(art.graphs.patch_encoder).__enter__(), agg),
            Route("ort-fp16", "fp16", OrtRunner(art.patch_encoder_fp16).__enter__(), agg)]


def test_parity_ort_fp32_and_fp16_pass_gates_on_random_patches(tiny_export):
    model, art = tiny_export
    report = compare_routes(model, _backends(art), n_random=64)
    enforce(report)
    assert report.backends["ort-fp32"]["random_patches"]["max_abs_dprob"] <= 1e-5
    assert report.backends["ort-fp16"]["random_patches"]["max_abs_dprob"] <= 1e-2


def test_parity_on_generated_images(tiny_export, generated_images):
    model, art = tiny_export
    report = compare_routes(model, _backends(art), image_paths=generated_images, n_random=8)
    enforce(report)
    for name in ("ort-fp32", "ort-fp16"):
        assert report.backends[name]["images"]["n"] == len(generated_images)
        assert report.backends[name]["images"]["decision_flips"] == 0
        assert report.backends[name]["images"]["max_abs_dprob"] <= (1e-5 if name == "ort-fp32" else 1e-2)


if SAMPLES_DIR.is_dir():  # only defined where ../shared/ is present: it adds cases, its absence skips nothing
    def test_parity_on_shared_samples_with_their_labels(tiny_export):
        model, art = tiny_export
        paths, labels = load_images(SAMPLES_DIR)
        assert len(paths) == 18 and labels is not None
        report = compare_routes(model, _backends(art), image_paths=paths[::3], labels=labels[::3], n_random=8)
        enforce(report)
        for name in ("ort-fp32", "ort-fp16"):
            assert report.backends[name]["images"]["decision_flips"] == 0


def test_gates_fail_with_accuracy_error_when_tightened(tiny_export):
    model, art = tiny_export
    report = compare_routes(model, _backends(art), n_random=8, gates=Gates(fp16_max_dprob=0.0))
    assert not report.passed
    with pytest.raises(AccuracyError) as e:
        enforce(report)
    assert e.value.exit_code == 3


def test_torch_runner_matches_model(tiny_export):
    model, _ = tiny_export
    x = np.random.default_rng(1).random((2, 3, 224, 224), dtype=np.float32)
    with TorchRunner(model, "patch_encoder") as r:
        np.testing.assert_allclose(r.infer({"patches": x})["patch_features"],
                                   model.encode_patches(torch.from_numpy(x)).detach().numpy(), atol=1e-6)


def test_compare_outputs_and_logit_parity_basics():
    assert compare_outputs(np.zeros(3), np.full(3, 1e-3), atol=1e-2)
    assert not compare_outputs(np.zeros(3), np.full(3, 1.0), atol=1e-2)
    stats = logit_parity(np.array([-1.0, 0.1, 2.0]), np.array([-1.0, -0.1, 2.0]), labels=np.array([0, 1, 1]))
    assert stats["decision_flips"] == 1 and stats["auc_delta"] is not None


def test_logit_parity_gates_the_raw_probability_and_decides_where_users_do():
    from spai.model.calibration import Calibration, OperatingPoint, sigmoid

    ref, test = np.array([-1.0, 0.1, 2.0]), np.array([-1.0, 0.3, 2.0])
    assert logit_parity(ref, test)["decision_flips"] == 0  # uncalibrated: both above 0.5
    cal = Calibration("platt", 0.5, -0.4, (OperatingPoint("fpr0.05", float(sigmoid(0.2 / 0.5 - 0.4))),), "fpr0.05")
    stats = logit_parity(ref, test, calibration=cal)
    assert stats["decision_flips"] == 1 and stats["operating_point"] == "fpr0.05"
    want = np.abs(cal.probability(ref).astype(np.float64) - cal.probability(test)).max()
    assert stats["max_abs_dprob_calibrated"] == pytest.approx(want)  # reported beside the gated raw one
    assert stats["max_abs_dprob"] == pytest.approx(np.abs(sigmoid(ref).astype(np.float64) - sigmoid(test)).max())


def test_a_steeply_calibrated_model_is_judged_on_its_raw_logits_and_decided_at_its_operating_point(tiny_export):
    """A weakly separating model calibrated on a small set gets a steep slope (1 / temperature): ORT fp32's ~1e-6
    logit differences become calibrated probability differences far above the fp32 gate, although the graphs agree.
    Numerical parity is judged on the raw logits / raw probability; decisions at the calibrated operating point."""
    import copy

    from spai.model.calibration import Calibration, OperatingPoint

    model, art = tiny_export
    steep = copy.deepcopy(model)
    ref = steep.score([np.random.default_rng(0).integers(0, 256, (448, 448, 3), dtype=np.uint8)])
    z0 = float(np.log(ref[0] / (1 - ref[0])))  # centre the steep sigmoid on this model's logits
    steep.calibration = Calibration("platt", 0.002, -z0 / 0.002, (OperatingPoint("fpr0.05", 0.5),), "fpr0.05")
    report = compare_routes(steep, _backends(art)[:1], n_random=64)
    stats = report.backends["ort-fp32"]["random_patches"]
    assert stats["max_abs_dprob"] <= 1e-5, stats  # raw: the graphs agree
    assert stats["max_abs_dprob_calibrated"] > 1e-5, stats  # what the old gate judged
    assert stats["operating_point"] == "fpr0.05" and report.passed, report.failures
