"""Fairness check run with the suite: the baseline computes the same features as ``encode_patches``."""

from __future__ import annotations

from collections.abc import Callable

import torch

from benchmarks.baseline import UpstreamBaseline
from benchmarks.common import BenchMode


def test_baseline_matches_encode_patches(bench_mode: BenchMode, spai_model: Callable) -> None:
    for name in bench_mode.encoder_models:
        model = spai_model(name)
        x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(5))
        base = UpstreamBaseline(model)
        try:
            with torch.inference_mode():
                diff = (base(x) - model.encode_patches(x)).abs().max().item()
        finally:
            base.close()
        assert diff <= 1e-4, f"{name}: baseline differs from encode_patches by {diff:.2e}"
