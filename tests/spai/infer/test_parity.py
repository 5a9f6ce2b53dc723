"""The comparator's own arithmetic (the routes' gates are tested in tests/export/test_parity.py)."""

from __future__ import annotations

import numpy as np
import pytest

from spai.infer.parity import _auc


def test_the_auc_is_scikit_learns_with_ties():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for _ in range(50):
        labels = rng.integers(0, 2, 40)
        scores = np.round(rng.normal(size=40), 1)  # rounded: many ties
        if len(np.unique(labels)) == 2:
            assert _auc(labels, scores) == pytest.approx(metrics.roc_auc_score(labels, scores), abs=1e-12)
    assert _auc(np.ones(5), np.arange(5.0)) is None
