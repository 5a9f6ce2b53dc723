"""The device's matmul peak, measured in the same run: a large GEMM (CPU: fp32 torch and ORT, bf16 torch, int8
ORT; GPU: fp32/fp16/bf16).

The report divides each encoder or route case's achieved FLOP/s (FlopCounterMode FLOPs per patch x patches/s) by
the peak of its precision.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.backends import DTYPES
from benchmarks.common import BenchMode, cpu_threads, run_benchmark


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


def test_matmul_peak_cpu_bf16(benchmark, bench_mode: BenchMode) -> None:
    """bf16 GEMM through oneDNN (AVX-512 BF16 / AMX where the CPU has them): the torch-bf16 route's peak."""
    benchmark.group = "peak-cpu"
    _gemm(benchmark, bench_mode.gemm_size, "bf16", torch.device("cpu"), rounds=max(3, bench_mode.rounds))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_matmul_peak_gpu(benchmark, dtype: str, bench_mode: BenchMode) -> None:
    benchmark.group = "peak-gpu"
    _gemm(benchmark, 8192, dtype, torch.device("cuda"), rounds=20)


def _ort_matmul_session(n: int, op: str = "MatMul") -> object:
    """An ONNX Runtime session holding one n x n MatMul (fp32, MLAS) or MatMulInteger (uint8 x int8 -> int32:
    the int8 route's u8s8 GEMM), one intra-op thread per core."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    types = (TensorProto.FLOAT,) * 3 if op == "MatMul" else (TensorProto.UINT8, TensorProto.INT8, TensorProto.INT32)
    io = [helper.make_tensor_value_info(name, t, [n, n]) for name, t in zip(("a", "b", "c"), types)]
    graph = helper.make_graph([helper.make_node(op, ["a", "b"], ["c"])], "gemm", io[:2], io[2:])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = cpu_threads()
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def test_matmul_peak_cpu_ort(benchmark, bench_mode: BenchMode) -> None:
    """The same GEMM through ONNX Runtime's MLAS (on AMD CPUs it beats torch's MKL sgemm about 2x)."""
    pytest.importorskip("onnx", reason="onnx is not installed")
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    benchmark.group = "peak-cpu"
    n = bench_mode.gemm_size
    session = _ort_matmul_session(n)
    rng = np.random.default_rng(4)
    feed = {k: rng.random((n, n), dtype=np.float32) for k in ("a", "b")}
    flops = 2 * n ** 3
    median = run_benchmark(benchmark, lambda: session.run(None, feed), torch.device("cpu"),
                           rounds=max(3, bench_mode.rounds), warmup_rounds=2, items=1, kind="peak",
                           backend="gemm-fp32-ort", dtype="fp32", n=n, flops_per_step=flops)
    benchmark.extra_info["flops_per_s"] = flops / median


def test_matmul_peak_cpu_int8(benchmark, bench_mode: BenchMode) -> None:
    """uint8 x int8 GEMM through ONNX Runtime (MLAS, VNNI where the CPU has it): the ort-int8 route's peak."""
    pytest.importorskip("onnx", reason="onnx is not installed")
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    benchmark.group = "peak-cpu"
    n = bench_mode.gemm_size
    session = _ort_matmul_session(n, "MatMulInteger")
    rng = np.random.default_rng(4)
    feed = {"a": rng.integers(0, 256, (n, n), dtype=np.uint8), "b": rng.integers(-128, 128, (n, n), dtype=np.int8)}
    flops = 2 * n ** 3
    median = run_benchmark(benchmark, lambda: session.run(None, feed), torch.device("cpu"),
                           rounds=max(3, bench_mode.rounds), warmup_rounds=2, items=1, kind="peak",
                           backend="gemm-int8-ort", dtype="int8", n=n, flops_per_step=flops)
    benchmark.extra_info["flops_per_s"] = flops / median
