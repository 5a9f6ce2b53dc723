"""Patch-encoder backends: each builder returns a zero-argument ``step`` that encodes one prepared batch.

A builder raises :class:`Unavailable` (the test turns it into a skip with the reason) when the hardware or
library it needs is missing.
"""

from __future__ import annotations

import copy
import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.baseline import OriginalAlgorithm, original_baseline
from benchmarks.common import cpu_threads
from spai.lazy import lazy_import
from spai.model.specs import ENCODER_FILES, PLAN_FILES

onnx_lib = lazy_import("onnx")

Step = Callable[[], Any]
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
CPU_BACKENDS = ("baseline", "torch-fp32", "torch-bf16", "ort-fp32", "ort-fp16", "ort-int8")
GPU_BACKENDS = ("baseline", "torch-fp32", "torch-fp16", "torch-bf16", "compile-fp16", "cudagraph-fp16", "trt-fp16")


class Unavailable(Exception):  # noqa: N818  (a skip reason, not an error)
    """The backend cannot run here; the message says why."""


def _no_grad(fn: Callable[[torch.Tensor], Any], x: torch.Tensor) -> Step:
    def step() -> Any:
        with torch.inference_mode():
            return fn(x)
    return step


def baseline_step(model: torch.nn.Module, x: torch.Tensor) -> tuple[Step, OriginalAlgorithm]:
    """The model's original algorithm (:func:`benchmarks.baseline.original_baseline`: upstream SPAI's three passes,
    or the fusion fork's four) on the model's weights, one encoder call (call ``close()`` on the second value)."""
    base = original_baseline(model)
    return _no_grad(base.encode, x), base


def torch_step(model: torch.nn.Module, x: torch.Tensor, dtype: str) -> Step:
    """Eager PyTorch in ``dtype`` (a converted copy of the model for fp16/bf16 on a GPU; on a CPU bf16 is the
    torch-bf16 route: :class:`spai.model.nn.precision.Bf16Gemms`, norms, statistics and the route's kept layers fp32)."""
    if dtype == "fp32":
        return _no_grad(model.encode_patches, x)
    if dtype == "bf16" and x.device.type == "cpu":
        from spai.model.nn.precision import Bf16Gemms, bf16_fp32_layers

        mode = Bf16Gemms(model, bf16_fp32_layers(model))

        def step() -> Any:
            with torch.inference_mode(), mode:
                return model.encode_patches(x)
        return step
    cast = copy.deepcopy(model).to(DTYPES[dtype])
    return _no_grad(cast.encode_patches, x.to(DTYPES[dtype]))


def compile_step(model: torch.nn.Module, x: torch.Tensor, dtype: str) -> Step:
    """``torch.compile`` (default mode) of the fp16/bf16 model; compiles before timing."""
    cast = copy.deepcopy(model).to(DTYPES[dtype])
    compiled = torch.compile(cast.encode_patches, dynamic=False)
    step = _no_grad(compiled, x.to(DTYPES[dtype]))
    for _ in range(2):
        step()
    return step


def cudagraph_step(model: torch.nn.Module, x: torch.Tensor, dtype: str) -> Step:
    """The eager fp16 model captured once in a CUDA graph; the step replays it."""
    cast = copy.deepcopy(model).to(DTYPES[dtype])
    static = x.to(DTYPES[dtype]).clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), torch.no_grad():
        for _ in range(3):
            cast.encode_patches(static)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(graph):
        cast.encode_patches(static)
    return graph.replay


def ort_step(onnx_dir: Path, x: torch.Tensor, precision: str) -> Step:
    """An ONNX Runtime CPU runner on ``patch_encoder[.fp16].onnx`` (one thread per core) declared for this batch."""
    if importlib.util.find_spec("onnxruntime") is None:
        raise Unavailable("onnxruntime is not installed")
    from spai.infer.runners import OrtRunner
    from spai.model.specs import PATCHES

    path = onnx_dir / ENCODER_FILES[precision]
    if not path.is_file():
        err = onnx_dir / "fp16_error.txt"
        why = err.read_text() if err.is_file() else f"files: {sorted(p.name for p in onnx_dir.iterdir())}"
        raise Unavailable(f"no {path.name} from export ({why})")
    feed = {PATCHES: graph_patches(x)}
    runner = OrtRunner(path, threads=cpu_threads(), limits={PATCHES: tuple(x.shape)}).__enter__()
    return lambda: runner.infer(feed)


def graph_patches(x: torch.Tensor) -> np.ndarray:
    """Float patches in [0, 1] as the exported graphs take them (:data:`spai.model.specs.PATCHES_INPUT`: uint8)."""
    from spai.model.specs import PATCHES_INPUT

    if PATCHES_INPUT.np_dtype == np.uint8:
        return (x.detach().cpu() * 255).round().to(torch.uint8).numpy()
    return x.detach().cpu().numpy().astype(PATCHES_INPUT.np_dtype)


class TrtStep:
    """The TensorRT backend's step: the engine runs on inputs already on the device (its own stream, buffers
    allocated once for this shape); ``outputs()`` copies the last result out after the timed region.
    ``device_memory_bytes``: the execution context's own memory (not seen by torch's allocator), which the
    benchmark adds to its CUDA peak."""

    def __init__(self, runner: Any, feed: dict[str, torch.Tensor]) -> None:
        self.runner, self.feed = runner, feed
        self.device_memory_bytes = int(runner.device_memory_bytes)
        self.last: dict[str, torch.Tensor] = {}

    def __call__(self) -> dict[str, torch.Tensor]:
        self.last = self.runner.infer_device(self.feed)
        return self.last

    def outputs(self) -> dict[str, np.ndarray]:
        return {k: v.cpu().numpy() for k, v in self.last.items()}

    def close(self) -> None:
        self.runner.__exit__(None, None, None)


def trt_step(onnx_dir: Path, x: torch.Tensor, work_dir: Path) -> TrtStep:
    """TensorRT fp16 engine (``export.trt.engine_from_onnx``, profile up to this batch) run by its TrtRunner on
    the batch, moved to the device (in the engine's input dtype) before timing."""
    from export.trt import TrtRunner, engine_from_onnx, tensorrt_importable

    if not tensorrt_importable():
        raise Unavailable("TensorRT (the `tensorrt` package, not only its type stubs) is not installed here")
    from spai.model.specs import PATCHES, patch_encoder_spec, trt_profile

    batch = x.shape[0]
    onnx = onnx_dir / ENCODER_FILES["fp16"]
    onnx = onnx if onnx.is_file() else onnx_dir / ENCODER_FILES["fp32"]
    spec = patch_encoder_spec(_feature_dim_of(onnx))
    plan = engine_from_onnx(onnx, work_dir / PLAN_FILES["patch_encoder"], trt_profile(spec, 1, batch, batch))
    runner = TrtRunner(plan).__enter__()  # one engine per test; freed by close() at test teardown
    patches = torch.from_numpy(graph_patches(x)).to(x.device if x.is_cuda else torch.device("cuda"))
    return TrtStep(runner, {PATCHES: patches})


def _feature_dim_of(onnx: Path) -> int:
    """The feature dimension stored in an exported patch encoder's output shape."""
    out = onnx_lib.load(str(onnx), load_external_data=False).graph.output[0]
    return int(out.type.tensor_type.shape.dim[-1].dim_value)
