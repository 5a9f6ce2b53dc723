"""Aggregator cost (spectral context attention + head) versus the number of patches, 1 to 4096, CPU."""

from __future__ import annotations

from collections.abc import Callable

import torch

from benchmarks.common import BenchMode, run_benchmark

AGGREGATOR_MODEL = "spai-fusion-b16"  # the deployed head (D = 1168); cheap whatever the backbone


def test_aggregator_cpu(benchmark, agg_length: int, bench_mode: BenchMode, spai_model: Callable) -> None:
    benchmark.group = f"aggregator-{AGGREGATOR_MODEL}"
    model = spai_model(AGGREGATOR_MODEL)
    features = torch.randn(1, agg_length, model.feature_dim, generator=torch.Generator().manual_seed(3))
    mask = torch.ones(1, agg_length, dtype=torch.bool)

    def step() -> None:
        with torch.inference_mode():
            model.aggregate(features, mask)

    run_benchmark(benchmark, step, torch.device("cpu"), rounds=bench_mode.rounds * 5, warmup_rounds=2,
                  items=agg_length, kind="aggregator", backend="torch-fp32", model=AGGREGATOR_MODEL,
                  patches=agg_length, feature_dim=model.feature_dim)
