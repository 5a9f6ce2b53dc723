"""Patch encoder throughput (patches/s) by backend x batch size, with the upstream-style baseline in the same run.

CPU: baseline (the model's original algorithm), torch eager fp32 / bf16 (GEMMs only), ONNX Runtime fp32 / fp16 /
int8 (export.onnx, export.quantize).
GPU: baseline, torch eager fp32 / fp16 / bf16, torch.compile, CUDA graphs, TensorRT fp16 where installed (inputs
already on the device in the timed region, outputs copied after it, the engine's own memory in the CUDA peak).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from benchmarks import backends
from benchmarks.common import BenchMode, run_benchmark


def _rounds(mode: BenchMode, name: str, batch: int) -> int:
    """Fewer rounds for the full-size model (about 1.5 s per patch on 2 CPU cores)."""
    return mode.rounds if name == "spai-tiny" else max(2, mode.rounds // (2 if batch == 1 else 3))


def _cpu_step(backend: str, name: str, x: torch.Tensor, spai_model: Callable, request: pytest.FixtureRequest):
    model = spai_model(name)
    if backend == "baseline":
        return backends.baseline_step(model, x)
    if backend.startswith("torch-"):
        return backends.torch_step(model, x, backend.split("-")[1]), None
    onnx_dir = request.getfixturevalue("onnx_exports")(name)
    return backends.ort_step(onnx_dir, x, backend.split("-")[1]), None


def _measure(benchmark, step: Callable, closer, device: torch.device, *, backend: str, name: str, batch: int,
             rounds: int, warmup_rounds: int, flops: dict[str, int], **info) -> None:
    """Time one encoder case (the CPU and GPU tests alike): ``run_benchmark`` with FLOPs and memory, then the
    backend's own device memory (a TensorRT context's, which torch's allocator does not see) added to the CUDA
    peak, outputs copied out after the timed region, and the backend closed."""
    try:
        median = run_benchmark(benchmark, step, device, rounds=rounds, warmup_rounds=warmup_rounds, items=batch,
                               kind="encoder", backend=backend, model=name, batch=batch,
                               flops_per_patch=flops["model"], baseline_flops_per_patch=flops["baseline"], **info)
        extra = int(getattr(step, "device_memory_bytes", 0))
        if extra:
            benchmark.extra_info["engine_device_memory_mb"] = round(extra / 2**20, 1)
            benchmark.extra_info["cuda_peak_mb"] = round(benchmark.extra_info.get("cuda_peak_mb", 0.0)
                                                         + extra / 2**20, 1)
        if hasattr(step, "outputs"):
            step.outputs()  # device -> host, after the timed region
    finally:
        if closer is not None:
            closer.close()
    benchmark.extra_info["patches_per_s"] = batch / median


@pytest.mark.parametrize("backend", backends.CPU_BACKENDS)
def test_patch_encoder_cpu(benchmark, backend: str, model_batch: tuple[str, int], bench_mode: BenchMode,
                           spai_model: Callable, encoder_flops: Callable, request: pytest.FixtureRequest) -> None:
    name, batch = model_batch
    benchmark.group = f"encoder-cpu-{name}-bs{batch}"
    x = torch.rand(batch, 3, 224, 224, generator=torch.Generator().manual_seed(batch))
    try:
        step, closer = _cpu_step(backend, name, x, spai_model, request)
    except backends.Unavailable as e:
        pytest.skip(str(e))
    _measure(benchmark, step, closer, torch.device("cpu"), backend=backend, name=name, batch=batch,
             rounds=_rounds(bench_mode, name, batch), warmup_rounds=1, flops=encoder_flops(name))


def _gpu_step(backend: str, model: torch.nn.Module, x: torch.Tensor, onnx_dir: Callable, tmp_path):
    if backend == "baseline":
        return backends.baseline_step(model, x)
    kind, dtype = backend.split("-")
    if kind == "torch":
        return backends.torch_step(model, x, dtype), None
    if kind == "compile":
        return backends.compile_step(model, x, dtype), None
    if kind == "cudagraph":
        return backends.cudagraph_step(model, x, dtype), None
    step = backends.trt_step(onnx_dir(), x, tmp_path)
    return step, step


@pytest.mark.gpu
@pytest.mark.parametrize("backend", backends.GPU_BACKENDS)
def test_patch_encoder_gpu(benchmark, backend: str, gpu_batch: int, bench_mode: BenchMode, spai_model: Callable,
                           encoder_flops: Callable, request: pytest.FixtureRequest, tmp_path) -> None:
    name = "spai-fusion-b16"
    benchmark.group = f"encoder-gpu-{name}-bs{gpu_batch}"
    device = torch.device("cuda")
    model = spai_model(name, "cuda")
    x = torch.rand(gpu_batch, 3, 224, 224, device=device)
    onnx_dir = lambda: request.getfixturevalue("onnx_exports")(name)  # noqa: E731
    try:
        step, closer = _gpu_step(backend, model, x, onnx_dir, tmp_path)
    except backends.Unavailable as e:
        pytest.skip(str(e))
    _measure(benchmark, step, closer, device, backend=backend, name=name, batch=gpu_batch,
             rounds=max(5, bench_mode.rounds), warmup_rounds=3, flops=encoder_flops(name),
             dtype=backend.split("-")[-1] if "-" in backend else "fp32")
