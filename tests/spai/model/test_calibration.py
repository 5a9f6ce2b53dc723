"""Calibration from labelled scores: the fits recover known scalings and lower NLL / ECE on held-out data, the
operating points hold their false-positive rate where the data allows one and are refused where it does not,
bad inputs are refused, and the entry is plain data that scorers apply bit for bit."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from spai.errors import CalibrationError
from spai.infer.scorer import decide_scores
from spai.infer.scores import ImageScore
from spai.model.calibration import UNCALIBRATED, Calibration, OperatingPoint, sigmoid
from spai.train.calibration import (
    BALANCED,
    balanced_threshold,
    calibration_from_scores,
    calibration_summary,
    detection_metrics,
    expected_calibration_error,
    fit_scaling,
    min_negatives,
    probability_metrics,
    rates,
    reliability_bins,
    threshold_at_fpr,
    tpr_at_fpr_interval,
)


def synthetic(n: int, temperature: float, bias: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose true P(AI-generated) is sigmoid(z / temperature + bias)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 1.5, n) * temperature
    y = (rng.random(n) < sigmoid(z / temperature + bias)).astype(int)
    return z.astype(np.float32), y


@pytest.mark.parametrize("method,temperature,bias", [("temperature", 0.05, 0.0), ("platt", 4.0, -1.0)])
def test_fits_recover_a_known_scaling(method, temperature, bias):
    z, y = synthetic(20000, temperature, bias, seed=1)
    t, b = fit_scaling(z, y, method)
    assert t == pytest.approx(temperature, rel=0.05)
    assert b == pytest.approx(bias, abs=0.05 if method == "platt" else 0)


@pytest.mark.parametrize("method", ["temperature", "platt"])
def test_calibration_lowers_nll_brier_and_ece_on_held_out_data(method):
    z, y = synthetic(8000, 0.02, 0.0 if method == "temperature" else 0.8, seed=2)
    entry = calibration_from_scores(z[:4000], y[:4000], method=method, fprs=[0.01, 0.05])
    cal = Calibration.from_entry(entry)
    before = probability_metrics(y[4000:], UNCALIBRATED.probability(z[4000:]))
    after = probability_metrics(y[4000:], cal.probability(z[4000:]))
    assert after["nll"] < before["nll"] - 0.05 and after["brier"] < before["brier"]
    assert after["ece"] < 0.03 and entry["after"]["nll"] < entry["before"]["nll"]


def test_operating_points_hold_their_fpr_on_held_out_data():
    z, y = synthetic(20000, 1.0, 0.0, seed=3)
    entry = calibration_from_scores(z[:10000], y[:10000], fprs=[0.01, 0.05])
    cal = Calibration.from_entry(entry)
    assert [p["name"] for p in entry["operating_points"]] == ["fpr0.01", "fpr0.05", BALANCED]
    assert entry["default"] == "fpr0.01"
    for point in entry["operating_points"][:2]:
        assert point["fpr"] <= point["target_fpr"]  # on the calibration set, by construction
        held_fpr, held_tpr = rates(y[10000:], cal.probability(z[10000:]), point["threshold"])
        assert held_fpr == pytest.approx(point["target_fpr"], abs=0.006)
        assert point["tpr_ci"][0] <= point["tpr"] <= point["tpr_ci"][1]
        assert held_tpr == pytest.approx(point["tpr"], abs=0.03)


def test_threshold_at_fpr_is_the_largest_tpr_within_the_target():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 300)
    p = np.round(rng.random(300) * 0.5 + 0.3 * y, 2).astype(np.float32)  # ties included
    for target in (0.01, 0.05, 0.2):
        t = threshold_at_fpr(y, p, target)
        fpr, tpr = rates(y, p, t)
        assert fpr <= target and tpr == max(r[1] for c in np.unique(p) if (r := rates(y, p, c))[0] <= target)
        lower = np.unique(p[p < t])
        if len(lower):  # the next threshold down would break the target: the whole FPR budget is used
            assert rates(y, p, lower[-1])[0] > target
    separable = np.array([0, 0, 0, 1, 1]), np.array([0.1, 0.2, 0.3, 0.7, 0.8])
    assert threshold_at_fpr(*separable, 0.34) == pytest.approx(0.3)  # 1 of 3 real images: as the target allows
    ba = balanced_threshold(y, p)
    best = max((rates(y, p, c)[1] - rates(y, p, c)[0]) for c in np.unique(p))
    assert rates(y, p, ba)[1] - rates(y, p, ba)[0] == pytest.approx(best)


def test_reliability_bins_and_ece_follow_their_definitions():
    y = np.array([0, 0, 1, 1, 1, 0, 1, 0])
    p = np.array([0.05, 0.1, 0.9, 0.95, 0.5, 0.52, 0.97, 0.02])
    prob_true, prob_pred, counts = reliability_bins(y, p, n_bins=2)  # bins [0, 0.5] and (0.5, 1]
    assert counts.tolist() == [4, 4] and prob_true.tolist() == [0.25, 0.75]
    want = (4 * abs(0.25 - p[[0, 1, 4, 7]].mean()) + 4 * abs(0.75 - p[[2, 3, 5, 6]].mean())) / 8
    assert expected_calibration_error(y, p, n_bins=2) == pytest.approx(want)


def test_too_few_real_images_refuse_an_operating_point_with_the_reason():
    z, y = synthetic(400, 1.0, 0.0, seed=5)
    assert min_negatives(0.01) == 100 and min_negatives(0.05) == 20
    entry = calibration_from_scores(z, y, fprs=[0.001, 0.05])
    assert [r["name"] for r in entry["refused"]] == ["fpr0.001"]
    assert "at least 1000 real images" in entry["refused"][0]["reason"]
    assert entry["default"] == "fpr0.05"  # the first target that could be set
    assert "refused" in calibration_summary(entry)
    with pytest.raises(CalibrationError, match="no target false-positive rate can be set.*1000 real images"):
        calibration_from_scores(z, y, fprs=[0.001])


@pytest.mark.parametrize("logits,labels,match", [
    ([0.1, 0.2, 0.3], [1, 1, 1], "only class 1"),
    ([0.1, float("nan"), 0.3], [0, 1, 1], "NaN"),
    ([0.1, 0.2], [0, 2], "0 \\(real\\) or 1"),
    ([], [], "labelled images"),
])
def test_bad_scores_are_refused(logits, labels, match):
    with pytest.raises(CalibrationError, match=match):
        calibration_from_scores(logits, labels, fprs=[0.5])


def test_bad_targets_and_backwards_models_are_refused():
    z, y = synthetic(400, 1.0, 0.0, seed=6)
    with pytest.raises(CalibrationError, match="between 0 and 1"):
        calibration_from_scores(z, y, fprs=[5.0])
    with pytest.raises(CalibrationError, match="backwards"):
        calibration_from_scores(-z, y, fprs=[0.05])
    with pytest.raises(CalibrationError, match="unknown calibration method"):
        fit_scaling(z, y, "isotonic")


def test_the_entry_is_plain_data_and_scorers_apply_it_exactly():
    z, y = synthetic(500, 0.3, 0.2, seed=7)
    entry = calibration_from_scores(z, y, method="platt", fprs=[0.05], csv_sha256="ab" * 32)
    buf = io.BytesIO()
    torch.save({"calibration": entry}, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)["calibration"]
    assert loaded == entry
    cal = Calibration.from_entry(loaded)
    want = sigmoid(z.astype(np.float64) / entry["temperature"] + entry["bias"])
    np.testing.assert_array_equal(cal.probability(z), want)
    point = cal.operating_point()
    scores = decide_scores(cal, [ImageScore(str(i), float(p), float(v)) for i, (p, v) in enumerate(zip(want, z))])
    assert [s.decision for s in scores] == (want >= point.threshold).tolist()
    assert {s.operating_point for s in scores} == {"fpr0.05"}


def test_uncalibrated_is_exactly_todays_sigmoid_at_one_half():
    z = np.random.default_rng(8).normal(0, 3, 1000).astype(np.float32)
    np.testing.assert_array_equal(UNCALIBRATED.probability(z), sigmoid(z))
    assert UNCALIBRATED.operating_point() == OperatingPoint("p0.5", 0.5)
    assert Calibration.from_entry(None) == UNCALIBRATED
    with pytest.raises(CalibrationError, match="unknown operating point 'fpr0.01'.*p0.5"):
        UNCALIBRATED.operating_point("fpr0.01")
    with pytest.raises(CalibrationError, match="malformed"):
        Calibration.from_entry({"method": "platt"})


def test_detection_metrics_measure_the_points_and_tpr_at_fixed_fpr():
    z, y = synthetic(3000, 1.0, 0.0, seed=9)
    cal = Calibration.from_entry(calibration_from_scores(z[:1500], y[:1500], fprs=[0.01, 0.05]))
    m = detection_metrics(y[1500:], cal.probability(z[1500:]), cal)
    assert [p["name"] for p in m["operating_points"]] == ["fpr0.01", "fpr0.05", BALANCED]
    assert m["operating_points"][0]["target_fpr"] == 0.01
    lo, hi = m["tpr_at_fpr"]["0.05"]["tpr_ci"]
    assert lo <= m["tpr_at_fpr"]["0.05"]["tpr"] <= hi
    assert tpr_at_fpr_interval(y[1500:], cal.probability(z[1500:]), 0.05) == [lo, hi]  # seeded: reproducible
    small = detection_metrics(y[:60], cal.probability(z[:60]), cal)
    assert small["tpr_at_fpr"]["0.01"]["tpr"] is None and "100 real images" in small["tpr_at_fpr"]["0.01"]["reason"]
    one_class = detection_metrics(np.ones(10, int), np.full(10, 0.9), cal)
    assert one_class["operating_points"][0]["fpr"] is None and one_class["operating_points"][0]["tpr"] == 1.0
