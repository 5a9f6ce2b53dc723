"""The device's matmul peak, measured in the same run: a large GEMM (fp32 on CPU; fp32/fp16/bf16 on GPU).

The report divides each encoder case's achieved FLOP/s (FlopCounterMode FLOPs per patch x patches/s) by this.
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.backends import DTYPES
from benchmarks.common import BenchMode, run_benchmark


def _gemm(benchmark, n: int, dtype: str, device: torch.device, rounds: int) -> None:
    gen = torch.Generator(device=device).manual_seed(4)
    a = torch.randn(n, n, device=device, generator=gen).to(DTYPES[dtype])
    b = torch.randn(n, n, device=device, generator=gen).to(DTYPES[dtype])
    out = torch.empty(n, n, device=device, dtype=DTYPES[dtype])
    flops = 2 * n ** 3
    median = run_benchmark(benchmark, lambda: torch.mm(a, b, out=out), device, rounds=rounds, warmup_rounds=2,
                           items=1, kind="peak", backend=f"gemm-{dtype}", dtype=dtype, n=n, flops_per_step=flops)
    benchmark.extra_info["flops_per_s"] = flops / median


def test_matmul_peak_cpu(benchmark, bench_mode: BenchMode) -> None:
    benchmark.group = "peak-cpu"
    _gemm(benchmark, bench_mode.gemm_size, "fp32", torch.device("cpu"), rounds=max(3, bench_mode.rounds))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_matmul_peak_gpu(benchmark, dtype: str, bench_mode: BenchMode) -> None:
    benchmark.group = "peak-gpu"
    _gemm(benchmark, 8192, dtype, torch.device("cuda"), rounds=20)
