"""Calibration from labelled scores: temperature or Platt scaling, operating points at target false-positive
rates, and the metrics that say how well probabilities and decisions hold (NLL, Brier, ECE, TPR at a fixed FPR
with bootstrap intervals).

The result is a checkpoint's ``calibration`` entry: plain data (``torch.load(weights_only=True)`` reads it) that
:meth:`spai.model.calibration.Calibration.from_entry` turns into what every scorer applies. Fitting uses scipy (the
negative log-likelihood minimised with L-BFGS-B; Platt's smoothed targets, as in scikit-learn's sigmoid
calibration, so a separable set cannot drive the temperature to 0), metrics scikit-learn, intervals
``scipy.stats.bootstrap`` (percentile, seeded: the same data give the same entry).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from spai.errors import CalibrationError
from spai.lazy import lazy_import
from spai.model.calibration import Calibration, OperatingPoint

sp_optimize = lazy_import("scipy.optimize")
sp_special = lazy_import("scipy.special")
sp_stats = lazy_import("scipy.stats")
sk_calibration = lazy_import("sklearn.calibration")
sk_metrics = lazy_import("sklearn.metrics")

METHODS = ("temperature", "platt")
DEFAULT_METHOD = "platt"  # a bias too: SPAI's logits need not be centred at 0 (docs/training.md, "Calibration")
DEFAULT_FPRS = (0.01, 0.05)
BALANCED = "balanced"
ECE_BINS = 15
RESAMPLES = 2000  # bootstrap resamples of a rate at a fixed threshold (vectorised: milliseconds)
RESELECT_RESAMPLES = 500  # resamples that re-select the threshold (a ROC curve each)
CONFIDENCE = 0.95
SEED = 0


def point_name(target_fpr: float) -> str:
    """The operating point's name for a target false-positive rate: ``fpr0.01``."""
    return f"fpr{target_fpr:g}"


def min_negatives(target_fpr: float) -> int:
    """Real images needed to set a threshold at ``target_fpr``: 1 / target (1% needs 100)."""
    return math.ceil(1.0 / target_fpr - 1e-9)


def checked_scores(logits: Sequence[float], labels: Sequence[int], what: str = "the calibration set"
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(logits float64, labels 0/1) or :class:`CalibrationError`: empty, NaN/inf scores, labels other than
    0/1, or a single class."""
    z, y = np.asarray(logits, np.float64).ravel(), np.asarray(labels).ravel()
    if len(z) != len(y) or not len(z):
        raise CalibrationError(f"{what} has {len(z)} scores for {len(y)} labels; it needs labelled images.")
    if not np.isfinite(z).all():
        raise CalibrationError(f"{what}: {int((~np.isfinite(z)).sum())} of {len(z)} images scored NaN or "
                               "infinity; the model or its checkpoint is broken. Nothing was written.")
    if not np.isin(y, (0, 1)).all():
        raise CalibrationError(f"{what}: class labels must be 0 (real) or 1 (AI-generated), got "
                               f"{sorted(set(y.tolist()) - {0, 1})[:5]}.")
    y = y.astype(np.int64)
    if y.min() == y.max():
        raise CalibrationError(f"{what} holds only class {int(y[0])} ({len(y)} images); calibration needs both "
                               "real (0) and AI-generated (1) images. Nothing was written.")
    return z, y


def _nll_and_grad(params: np.ndarray, z: np.ndarray, t: np.ndarray, platt: bool) -> tuple[float, np.ndarray]:
    log_t, bias = params[0], (params[1] if platt else 0.0)
    s = z * np.exp(-log_t) + bias
    nll = -np.mean(t * sp_special.log_expit(s) + (1 - t) * sp_special.log_expit(-s))
    residual = sp_special.expit(s) - t  # d nll / d s (per sample, before the mean)
    grad = [np.mean(residual * -z * np.exp(-log_t))] + ([np.mean(residual)] if platt else [])
    return float(nll), np.array(grad)


def fit_scaling(logits: np.ndarray, labels: np.ndarray, method: str = DEFAULT_METHOD) -> tuple[float, float]:
    """(temperature, bias) minimising the NLL of ``sigmoid(z / temperature + bias)``: temperature scaling (Guo
    et al. 2017; bias 0) or Platt scaling. Targets are Platt's ``(N+ + 1) / (N+ + 2)`` and ``1 / (N- + 2)``."""
    if method not in METHODS:
        raise CalibrationError(f"unknown calibration method {method!r}; use {' or '.join(METHODS)}.")
    z, y = checked_scores(logits, labels)
    n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
    targets = np.where(y == 1, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))
    platt = method == "platt"
    start = np.array([math.log(max(float(np.std(z)), 1e-6))] + ([0.0] if platt else []))
    result = sp_optimize.minimize(_nll_and_grad, start, args=(z, targets, platt), jac=True, method="L-BFGS-B",
                                  bounds=[(-20.0, 20.0)] + ([(None, None)] if platt else []))
    if not np.isfinite(result.x).all():
        raise CalibrationError(f"the {method} fit did not converge ({result.message}).")
    temperature = float(np.exp(result.x[0]))
    bias = float(result.x[1]) if platt else 0.0
    return temperature, bias


def reliability_bins(labels: np.ndarray, probs: np.ndarray, n_bins: int = ECE_BINS
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per non-empty uniform bin: (fraction of positives, mean probability, count): scikit-learn's
    ``calibration_curve`` plus the counts of the same bins."""
    probs = np.asarray(probs, np.float64)
    prob_true, prob_pred = sk_calibration.calibration_curve(labels, probs, n_bins=n_bins, strategy="uniform")
    bins = np.searchsorted(np.linspace(0.0, 1.0, n_bins + 1)[1:-1], probs)  # calibration_curve's binning
    counts = np.bincount(bins, minlength=n_bins)
    return prob_true, prob_pred, counts[counts > 0]


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """ECE: the count-weighted mean |fraction of positives - mean probability| over ``n_bins`` uniform bins."""
    prob_true, prob_pred, counts = reliability_bins(labels, probs, n_bins)
    return float(np.sum(counts * np.abs(prob_true - prob_pred)) / np.sum(counts))


def probability_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """NLL (log loss), Brier score and ECE (15 bins) of probabilities of class 1."""
    p = np.asarray(probs, np.float64)
    return {"nll": float(sk_metrics.log_loss(labels, p, labels=[0, 1])),
            "brier": float(sk_metrics.brier_score_loss(labels, p)),
            "ece": expected_calibration_error(labels, p)}


def rates(labels: np.ndarray, probs: np.ndarray, threshold: float) -> tuple[float, float]:
    """(FPR, TPR) of flagging ``probs >= threshold``."""
    flagged = OperatingPoint("", threshold).decide(probs)
    return float(flagged[labels == 0].mean()), float(flagged[labels == 1].mean())


def proportion_interval(flags: np.ndarray) -> list[float] | None:
    """Percentile bootstrap 95% interval of the mean of 0/1 ``flags`` (a rate at a fixed threshold); a
    constant sample gives [rate, rate], an empty one None."""
    flags = np.asarray(flags, np.float64)
    if not len(flags):
        return None
    if flags.min() == flags.max():
        return [float(flags[0])] * 2
    ci = sp_stats.bootstrap((flags,), np.mean, n_resamples=RESAMPLES, confidence_level=CONFIDENCE, method="percentile",
                            rng=np.random.default_rng(SEED)).confidence_interval
    return [float(ci.low), float(ci.high)]


def threshold_at_fpr(labels: np.ndarray, probs: np.ndarray, target_fpr: float) -> float:
    """The threshold of largest TPR whose FPR on the set is <= ``target_fpr`` (flag ``p >= threshold``): the
    lowest threshold within the target, i.e. the (1 - target) quantile of the real images' scores (Neyman-Pearson),
    so that new real images are flagged at about the target rate; above every score when no image can be flagged
    within the target."""
    probs = np.asarray(probs, np.float64)
    fpr, _, thresholds = sk_metrics.roc_curve(labels, probs, drop_intermediate=False)
    k = int(np.flatnonzero(fpr <= target_fpr + 1e-12)[-1])  # the lowest threshold within the target
    return float(thresholds[k]) if k > 0 else float(np.nextafter(probs.max(), np.inf))


def balanced_threshold(labels: np.ndarray, probs: np.ndarray) -> float:
    """The threshold of best balanced accuracy, midway between the lowest flagged score and the next lower one."""
    probs = np.asarray(probs, np.float64)
    fpr, tpr, thresholds = sk_metrics.roc_curve(labels, probs)
    k = int(np.argmax(tpr - fpr))
    if k == 0:
        return float(np.nextafter(probs.max(), np.inf))
    below = probs[probs < thresholds[k]]
    return float((thresholds[k] + below.max()) / 2) if len(below) else float(thresholds[k])


def tpr_at_fpr(labels: np.ndarray, probs: np.ndarray, target_fpr: float) -> float:
    """TPR at the threshold :func:`threshold_at_fpr` picks on the same data (the ROC curve at ``target_fpr``)."""
    if labels.min() == labels.max():
        return float("nan")
    return rates(labels, probs, threshold_at_fpr(labels, probs, target_fpr))[1]


def tpr_at_fpr_interval(labels: np.ndarray, probs: np.ndarray, target_fpr: float) -> list[float]:
    """Percentile bootstrap 95% interval of :func:`tpr_at_fpr`, re-selecting the threshold in every resample."""
    ci = sp_stats.bootstrap((labels, np.asarray(probs, np.float64)), lambda y, p: tpr_at_fpr(y, p, target_fpr),
                            paired=True, vectorized=False, n_resamples=RESELECT_RESAMPLES, confidence_level=CONFIDENCE,
                            method="percentile", rng=np.random.default_rng(SEED)).confidence_interval
    return [float(ci.low), float(ci.high)]


def measured_point(labels: np.ndarray, probs: np.ndarray, name: str, threshold: float,
                   target_fpr: float | None) -> dict[str, Any]:
    """An operating point with its measured FPR and TPR (bootstrap 95% intervals) and accuracy on this data."""
    flagged = OperatingPoint(name, threshold).decide(probs)
    negatives, positives = flagged[labels == 0], flagged[labels == 1]
    return {"name": name, "target_fpr": target_fpr, "threshold": float(threshold),
            "fpr": float(negatives.mean()) if len(negatives) else None, "fpr_ci": proportion_interval(negatives),
            "tpr": float(positives.mean()) if len(positives) else None, "tpr_ci": proportion_interval(positives),
            "accuracy": float((flagged == (labels == 1)).mean()), "n": int(len(labels))}


def operating_points(labels: np.ndarray, probs: np.ndarray, targets: Sequence[float]
                     ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(points, refused): one point per target FPR that the set's real images can support, then ``balanced``;
    a refused target says why."""
    n_neg = int((labels == 0).sum())
    points, refused = [], []
    for target in targets:
        if not 0 < target < 1:
            raise CalibrationError(f"target false-positive rate {target} must lie between 0 and 1 (e.g. 0.01).")
        if n_neg < min_negatives(target):
            refused.append({"name": point_name(target), "target_fpr": float(target),
                            "reason": f"a {target:g} false-positive rate needs at least {min_negatives(target)} "
                                      f"real images (1/target); the set has {n_neg}"})
            continue
        points.append(measured_point(labels, probs, point_name(target), threshold_at_fpr(labels, probs, target),
                                     float(target)))
    points.append(measured_point(labels, probs, BALANCED, balanced_threshold(labels, probs), None))
    return points, refused


def calibration_from_scores(logits: Sequence[float], labels: Sequence[int], *, method: str = DEFAULT_METHOD,
                            fprs: Sequence[float] = DEFAULT_FPRS, **provenance: Any) -> dict[str, Any]:
    """The ``calibration`` entry for a model that gave ``logits`` on images labelled ``labels`` (1 =
    AI-generated): the fitted scaling, operating points, before/after NLL, Brier and ECE, plus ``provenance``
    (e.g. ``csv``, ``csv_sha256``, ``split``). :class:`CalibrationError` if no target FPR can be set."""
    z, y = checked_scores(logits, labels)
    if len(set(fprs)) != len(fprs) or not fprs:
        raise CalibrationError(f"give one or more distinct target false-positive rates (got {list(fprs)}).")
    auc = float(sk_metrics.roc_auc_score(y, z))
    if auc < 0.5:
        raise CalibrationError(f"the model ranks this set backwards (AUC {auc:.3f} < 0.5: AI-generated images "
                               "score lower than real ones); calibration cannot fix that. Check the labels (1 = "
                               "AI-generated) and the checkpoint. Nothing was written.")
    temperature, bias = fit_scaling(z, y, method)
    scaling = Calibration(method, temperature, bias)
    before, after = Calibration().probability(z), scaling.probability(z)
    points, refused = operating_points(y, after, fprs)
    if len(points) == 1:  # balanced only
        raise CalibrationError("no target false-positive rate can be set: " + "; ".join(r["reason"] for r in refused)
                               + ". Add real images to the set or ask for a larger --fpr. Nothing was written.")
    entry = {"method": method, "temperature": temperature, "bias": bias, "operating_points": points,
             "refused": refused, "default": points[0]["name"], "n_positive": int(y.sum()),
             "n_negative": int(len(y) - y.sum()), "auc": auc, "before": probability_metrics(y, before),
             "after": probability_metrics(y, after), **provenance}
    Calibration.from_entry(entry)  # the entry must be what scorers can apply
    return entry


def detection_metrics(labels: Sequence[int], probs: np.ndarray, calibration: Calibration,
                      fprs: Sequence[float] = DEFAULT_FPRS) -> dict[str, Any]:
    """What ``spai test`` reports beside AUC/AP: each of the model's operating points measured on this data
    (FPR, TPR with 95% intervals, accuracy), the TPR at each of ``fprs`` re-selected on this data (ROC curve, with
    a bootstrap interval; None with the reason where the data has too few real images), NLL, Brier and ECE."""
    y, p = np.asarray(labels).astype(np.int64), np.asarray(probs, np.float64)
    n_neg, two_classes = int((y == 0).sum()), len(np.unique(y)) == 2
    at_fpr: dict[str, Any] = {}
    for target in fprs:
        if not two_classes or n_neg < min_negatives(target):
            at_fpr[f"{target:g}"] = {"tpr": None, "tpr_ci": None, "reason": "needs both classes and at least "
                                     f"{min_negatives(target)} real images (has {n_neg})"}
            continue
        at_fpr[f"{target:g}"] = {"tpr": tpr_at_fpr(y, p, target), "tpr_ci": tpr_at_fpr_interval(y, p, target),
                                 "threshold": threshold_at_fpr(y, p, target)}
    return {"operating_points": [measured_point(y, p, op.name, op.threshold, _target_of(op.name))
                                 for op in calibration.operating_points],
            "default_operating_point": calibration.default, "tpr_at_fpr": at_fpr, **probability_metrics(y, p)}


def _target_of(name: str) -> float | None:
    try:
        return float(name.removeprefix("fpr")) if name.startswith("fpr") else None
    except ValueError:
        return None


def _interval(ci: list[float] | None) -> str:
    return f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""


def calibration_summary(entry: dict[str, Any]) -> str:
    """A calibration entry in a few lines: the fit, the metrics before -> after, each operating point (measured
    on the calibration set) and each refused target with its reason."""
    b, a = entry["before"], entry["after"]
    lines = [f"calibration ({entry['method']}: temperature {entry['temperature']:.4g}, bias {entry['bias']:.4g}) on "
             f"{entry['n_negative']} real + {entry['n_positive']} AI-generated images"
             + (f" of {entry['csv']} (split {entry.get('split')})" if entry.get("csv") else ""),
             f"  NLL {b['nll']:.4f} -> {a['nll']:.4f}   Brier {b['brier']:.4f} -> {a['brier']:.4f}   "
             f"ECE {b['ece']:.4f} -> {a['ece']:.4f}   (AUC {entry['auc']:.4f})"]
    for p in entry["operating_points"]:
        default = " (default)" if p["name"] == entry["default"] else ""
        lines.append(f"  {p['name']}{default}: probability >= {p['threshold']:.6g}  FPR {p['fpr']:.4f}"
                     f"{_interval(p['fpr_ci'])}  TPR {p['tpr']:.4f}{_interval(p['tpr_ci'])}")
    lines += [f"  {r['name']}: refused ({r['reason']})" for r in entry.get("refused", [])]
    return "\n".join(lines)


def calibrated_checkpoint_from_checkpoint(source: str | os.PathLike, out: str | os.PathLike,
                                          entry: dict[str, Any]) -> Path:
    """Write a copy of checkpoint ``source`` with the ``calibration`` entry, atomically, to ``out``. Ours is
    copied entry for entry; an upstream/fork checkpoint is written in our format (its imported weights and
    config), so it loads with ``weights_only=True`` like ours."""
    from spai.model.checkpoint import NATIVE_FORMAT, read_checkpoint_file, save_checkpoint, save_payload
    from spai.model.factory import load_checkpoint

    data = read_checkpoint_file(source)
    if data.get("format") == NATIVE_FORMAT:
        payload = {**data, "calibration": entry}
        return save_payload(payload, out)
    model, state = load_checkpoint(source)
    state.pop("calibration", None)
    return save_checkpoint(model, out, **state, imported_from=str(source), calibration=entry)
