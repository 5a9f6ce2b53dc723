"""The one comparator: a route's scores against PyTorch FP32, with the parity gates in one place.

Two task-level checks per route, both through :mod:`spai.infer.scorer` (the code that serves), chunked and grouped by
each runner's declared limits: (1) real images at native resolution, against the torch runners
(``model.score_images``); (2) random patches grouped into pseudo-images of 1..8 patches (padding, dynamic L).
Numerical parity is judged on the raw logits' probability, decisions at the model's operating point.
It lives in the library because choosing a CPU route (``--precision auto``, :mod:`spai.infer.routes`) gates routes too;
``spai export`` (:mod:`export.pipeline`) gates every exported graph with it and writes the report
(:mod:`export.compare`). Pure numpy; no torch at import time.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from spai.errors import AccuracyError
from spai.infer.prepare import PreparedImage, prepare_image
from spai.infer.runners import Route, TorchRunner
from spai.infer.scorer import Scorer
from spai.model.calibration import UNCALIBRATED, Calibration, sigmoid
from spai.model.specs import PATCHES_INPUT

log = logging.getLogger(__name__)


@dataclass
class Gates:
    """Parity gates (overridable), by backend precision: ``<precision>_max_dprob`` and ``<precision>_max_flips``
    apply to backends of that precision (fp32; the reduced precisions fp16, bf16 and int8 are gated alike)."""

    fp32_max_dprob: float = 1e-5
    fp16_max_dprob: float = 1e-2
    fp16_max_flips: int = 0  # decision flips (at the model's default operating point) on the sample images
    fp32_max_flips: int = 0
    bf16_max_dprob: float = 1e-2
    bf16_max_flips: int = 0
    int8_max_dprob: float = 1e-2
    int8_max_flips: int = 0


@dataclass
class CompareResult:
    """Element-wise difference of two arrays; truthy when within ``atol``/``rtol`` (if given)."""

    max_abs: float
    mean_abs: float
    max_rel: float
    passed: bool = True

    def __bool__(self) -> bool:
        return self.passed


def compare_outputs(ref: np.ndarray, test: np.ndarray, *, atol: float | None = None,
                    rtol: float | None = None) -> CompareResult:
    """Max/mean absolute and max relative error of ``test`` against ``ref``."""
    ref64, test64 = np.asarray(ref, np.float64), np.asarray(test, np.float64)
    if ref64.shape != test64.shape:
        raise ValueError(f"shape mismatch: reference {ref64.shape} vs test {test64.shape}")
    diff = np.abs(ref64 - test64)
    rel = diff / np.maximum(np.abs(ref64), 1e-12)
    max_abs = float(diff.max(initial=0.0))
    passed = not np.isnan(test64).any()
    if atol is not None or rtol is not None:
        passed = passed and bool(np.all(diff <= (atol or 0.0) + (rtol or 0.0) * np.abs(ref64)))
    return CompareResult(max_abs, float(diff.mean()) if diff.size else 0.0, float(rel.max(initial=0.0)), passed)


def _auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """ROC AUC by the rank-sum (Mann-Whitney) formula, ties sharing their mean rank (= scikit-learn's
    roc_auc_score): numpy only, so that ``spai export`` needs nothing of the training extra."""
    if len(np.unique(labels)) != 2:
        return None
    positive = np.asarray(labels).astype(int) == 1
    values = np.asarray(scores, np.float64)
    order = np.argsort(values, kind="mergesort")
    _, first, counts = np.unique(values[order], return_index=True, return_counts=True)
    ranks = np.empty(len(values))
    ranks[order] = np.repeat(first + (counts + 1) / 2, counts)  # 1-based ranks
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def logit_parity(ref_logits: np.ndarray, test_logits: np.ndarray, labels: np.ndarray | None = None,
                 calibration: Calibration = UNCALIBRATED) -> dict:
    """max/mean |Δ logit|, max |Δ probability| (the gated one on the raw probability ``sigmoid(z)``; the
    calibrated one beside it), decision flips at the model's operating point and the AUC delta.

    Numerical parity is judged on the raw logits: a steep calibration (a small temperature, fitted on a small set)
    multiplies every logit difference by its slope, so the calibrated probability would fail a graph that computes
    the same logits. Decisions are what users get, so flips are counted on the calibrated probabilities at the
    calibration's default operating point (uncalibrated: sigmoid, decided at 0.5)."""
    ref, test = np.asarray(ref_logits, np.float64).ravel(), np.asarray(test_logits, np.float64).ravel()
    raw_ref, raw_test = (sigmoid(x).astype(np.float64) for x in (ref, test))
    p_ref, p_test = (calibration.probability(x).astype(np.float64) for x in (ref, test))
    point = calibration.operating_point()
    labels = point.decide(p_ref).astype(int) if labels is None else np.asarray(labels).astype(int)
    auc_ref, auc_test = _auc(labels, p_ref), _auc(labels, p_test)
    return {"n": int(ref.size), "max_abs_dlogit": float(np.abs(ref - test).max(initial=0.0)),
            "mean_abs_dlogit": float(np.abs(ref - test).mean()) if ref.size else 0.0,
            "max_abs_dprob": float(np.abs(raw_ref - raw_test).max(initial=0.0)),
            "max_abs_dprob_calibrated": float(np.abs(p_ref - p_test).max(initial=0.0)),
            "decision_flips": int((point.decide(p_ref) != point.decide(p_test)).sum()),
            "operating_point": point.name,
            "auc_ref": auc_ref, "auc_test": auc_test,
            "auc_delta": None if auc_ref is None or auc_test is None else auc_test - auc_ref,
            "finite": bool(np.isfinite(test).all())}


def random_patch_groups(n: int, seed: int = 0) -> tuple[np.ndarray, list[int]]:
    """``n`` random patches (uint8 pixel values, in the encoder's input dtype: floats scaled to [0, 1]) and a
    split of them into pseudo-images of 1..8 patches."""
    rng = np.random.default_rng(seed)
    counts: list[int] = []
    while sum(counts) < n:
        counts.append(int(min(rng.integers(1, 9), n - sum(counts))))
    pixels = rng.integers(0, 256, (n, *PATCHES_INPUT.shape), dtype=np.uint8)
    dtype = PATCHES_INPUT.np_dtype
    return (pixels if dtype == np.uint8 else (pixels.astype(dtype) / 255).astype(dtype)), counts


@dataclass
class ParityReport:
    """Everything ``export_report.json`` holds; ``passed`` is False if any gate failed."""

    backends: dict[str, dict] = field(default_factory=dict)
    gates: dict = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures


def _gate(name: str, precision: str, stats: dict, gates: Gates, flips_gated: bool) -> list[str]:
    if not hasattr(gates, f"{precision}_max_dprob"):
        raise ValueError(f"no parity gates for precision {precision!r}")
    limit, max_flips = getattr(gates, f"{precision}_max_dprob"), getattr(gates, f"{precision}_max_flips")
    fails = []
    if not stats["finite"]:
        fails.append(f"{name}: non-finite logits")
    if stats["max_abs_dprob"] > limit:
        fails.append(f"{name}: max |Δp| (raw probability) {stats['max_abs_dprob']:.3g} > {limit:g}")
    if flips_gated and stats["decision_flips"] > max_flips:
        fails.append(f"{name}: {stats['decision_flips']} decision flip(s) at operating point "
                     f"{stats['operating_point']} (allowed {max_flips})")
    return fails


def image_logits(scorer: Scorer, images: Sequence[PreparedImage]) -> np.ndarray:
    """Raw logits of prepared images, all scored together (one request)."""
    (scores,) = scorer.score_prepared([list(images)])
    if isinstance(scores, Exception):
        raise scores
    return np.array([s.logit for s in scores])


def compare_routes(model: Any, routes: Sequence[Route], *, image_paths: Sequence[Path] = (),
                   labels: np.ndarray | None = None, n_random: int = 256, gates: Gates | None = None) -> ParityReport:
    """Compare each entered :class:`spai.infer.runners.Route` with PyTorch FP32, gated by its precision (fp32, fp16,
    bf16 or int8: the names of :class:`Gates`); the report is keyed by route name."""
    gates = gates or Gates()
    report = ParityReport(gates=asdict(gates))
    calibration = getattr(model, "calibration", UNCALIBRATED)  # probabilities as users get them (spai.infer.scorer)
    if calibration.calibrated:
        report.notes.append(f"probabilities calibrated ({calibration.method}, T {calibration.temperature:.4g}, "
                            f"bias {calibration.bias:.4g}): parity judged on the raw logits and raw probability, "
                            f"decisions at operating point {calibration.default}")
    reference = Scorer(TorchRunner(model, "patch_encoder"), TorchRunner(model, "aggregator"))
    images = [prepare_image(p, str(p), spec=model.patch_spec) for p in image_paths]
    ref_images = None
    if images:
        log.info("scoring %d images with PyTorch ...", len(images))
        ref_images = image_logits(reference, images)
    patches, counts = random_patch_groups(n_random)
    log.info("encoding %d random patches with PyTorch ...", n_random)
    ref_feats, ref_random = reference.score_patch_groups(patches, counts)
    for route in routes:
        name, precision, scorer = route.name, route.precision, Scorer.for_route(route)
        log.info("checking %s (%s) ...", name, precision)
        entry: dict[str, Any] = {"precision": precision}
        feats, logits = scorer.score_patch_groups(patches, counts)
        entry["patch_features"] = asdict(compare_outputs(ref_feats, feats))
        entry["random_patches"] = logit_parity(ref_random, logits, calibration=calibration)
        report.failures += _gate(f"{name}/random", precision, entry["random_patches"], gates, False)
        if ref_images is not None:
            entry["images"] = logit_parity(ref_images, image_logits(scorer, images),
                                           labels, calibration)
            report.failures += _gate(f"{name}/images", precision, entry["images"], gates, True)
        report.backends[name] = entry
    if ref_images is not None:
        report.notes.append(f"{len(images)} images at native resolution; labels from "
                            f"{'samples.csv' if labels is not None else 'PyTorch decisions'}")
    return report


def enforce(report: ParityReport) -> None:
    """Raise :class:`spai.AccuracyError` (exit code 3) if a gate failed."""
    if not report.passed:
        raise AccuracyError("Exported model fails the parity gates:\n  " + "\n  ".join(report.failures))
