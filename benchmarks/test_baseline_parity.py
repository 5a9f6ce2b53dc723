"""Fairness check run with the suite: each original algorithm computes the same features as ``encode_patches``."""

from __future__ import annotations

from collections.abc import Callable

import torch

from benchmarks.baseline import original_baseline
from benchmarks.common import BenchMode


def test_baseline_matches_encode_patches(bench_mode: BenchMode, spai_model: Callable) -> None:
    for name in bench_mode.encoder_models:
        model = spai_model(name)
        x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(5))
        with original_baseline(model) as base, torch.inference_mode():
            diff = (base.encode(x) - model.encode_patches(x)).abs().max().item()
        assert diff <= 1e-4, f"{name}: baseline ({base.name}) differs from encode_patches by {diff:.2e}"
