"""ONNX -> TensorRT engine (TensorRT 10.x and 11.x Python API), and a runner for built engines.

``tensorrt`` is imported inside the functions: ``import export.trt`` works on machines without it.
Precision follows the ONNX dtypes: the mixed-precision ``patch_encoder.fp16.onnx`` is built as a strongly typed
network (``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` where the enum has it; TensorRT 11 networks are always
strongly typed). On TensorRT < 10.12, whose weakly typed builder would otherwise ignore the FP16 in the graph,
``fp16=True`` on a non-strongly-typed network sets ``BuilderFlag.FP16`` if that flag exists. ``fp32=True``
clears ``BuilderFlag.TF32`` (on by default) so FP32 matmuls really run in FP32.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from export.onnx import atomic_path
from spai.errors import ExportError
from spai.runners import Runner

Shape = tuple[int, ...]
Profile = dict[str, tuple[Shape, Shape, Shape]]


def import_tensorrt() -> Any:
    """``tensorrt`` or :class:`ExportError` saying how to get it."""
    try:
        import tensorrt as trt
    except ImportError as e:
        raise ExportError("TensorRT is not installed (pip install '.[trt]' on a machine with an NVIDIA GPU); "
                          "the ONNX files can still be served with onnxruntime.") from e
    return trt


def tensorrt_available() -> bool:
    """True where ``tensorrt`` imports and a CUDA GPU is visible."""
    try:
        import_tensorrt()
        import torch

        return torch.cuda.is_available()
    except ExportError:
        return False


def _network_flags(trt: Any) -> int:
    flags = 0
    creation = trt.NetworkDefinitionCreationFlag
    if hasattr(creation, "STRONGLY_TYPED"):  # TRT >= 9; deprecated no-op on TRT 11 (always strongly typed)
        flags |= 1 << int(creation.STRONGLY_TYPED)
    elif hasattr(creation, "EXPLICIT_BATCH"):
        flags |= 1 << int(creation.EXPLICIT_BATCH)
    return flags


def _parse(trt: Any, builder: Any, onnx_path: Path, logger: Any) -> Any:
    network = builder.create_network(_network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [_describe_parser_error(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ExportError(f"TensorRT cannot parse {onnx_path} ({len(errors)} error(s)):\n  " + "\n  ".join(errors))
    return network, parser


def _describe_parser_error(err: Any) -> str:
    parts = [str(err.desc())]
    for field in ("node_name", "node_operator"):
        value = getattr(err, field, None)
        if callable(value) and value():
            parts.append(f"{field}={value()}")
    if hasattr(err, "node"):
        parts.append(f"node#{err.node()}")
    return f"[{err.code()}] " + ", ".join(parts)


def _config(trt: Any, builder: Any, network: Any, profile: Profile, workspace_mb: int | None, fp32: bool) -> Any:
    config = builder.create_builder_config()
    if workspace_mb:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    opt = builder.create_optimization_profile()
    inputs = {network.get_input(i).name for i in range(network.num_inputs)}
    missing = inputs - set(profile)
    if missing:
        raise ExportError(f"No optimisation-profile range for input(s) {sorted(missing)}.")
    for name in sorted(inputs):
        opt.set_shape(name, *profile[name])
    config.add_optimization_profile(opt)
    flags = trt.BuilderFlag
    if fp32 and hasattr(flags, "TF32"):
        config.clear_flag(flags.TF32)
    strongly_typed = hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")
    if not fp32 and not strongly_typed and hasattr(flags, "FP16"):  # TRT < 9: weak typing, ask for FP16
        config.set_flag(flags.FP16)
    return config


def _load_timing_cache(config: Any, path: Path | None) -> Any:
    blob = path.read_bytes() if path is not None and path.is_file() else b""
    cache = config.create_timing_cache(blob)
    config.set_timing_cache(cache, ignore_mismatch=False)
    return cache


def engine_from_onnx(onnx_path: str | os.PathLike, plan_path: str | os.PathLike, profile: Profile, *,
                     timing_cache: str | os.PathLike | None = None, workspace_mb: int | None = None,
                     fp32: bool = False, verbose: bool = False) -> Path:
    """Build a serialized engine (``.plan``) from ONNX with one optimisation profile covering ``profile``
    (input name -> (min, opt, max) shapes, see :func:`spai.specs.trt_profile`). The timing cache, if
    given, is loaded and written back. Nothing is left at ``plan_path`` if the build fails."""
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network, _parser = _parse(trt, builder, Path(onnx_path), logger)
    config = _config(trt, builder, network, profile, workspace_mb, fp32)
    cache_path = Path(timing_cache) if timing_cache else None
    _load_timing_cache(config, cache_path)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"TensorRT failed to build an engine from {onnx_path}; rerun with verbose logging "
                          "or a larger --workspace.")
    plan = Path(plan_path)
    with atomic_path(plan) as tmp:
        tmp.write_bytes(bytes(serialized))
    if cache_path is not None:
        with atomic_path(cache_path) as tmp:
            tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
    return plan


class TrtRunner(Runner):
    """Runs a serialized engine on the current CUDA device with torch-allocated buffers (profile 0).

    Declares the engine's own limits: the largest shape of optimisation profile 0 for every input.
    """

    def __init__(self, plan_path: str | os.PathLike) -> None:
        super().__init__()
        self.path = Path(plan_path)
        self.name = f"trt:{self.path.name}"
        self.engine: Any = None
        self.context: Any = None

    def __enter__(self) -> TrtRunner:
        trt = import_tensorrt()
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise ExportError(f"{self.path} is not a TensorRT engine for this TensorRT version / GPU; rebuild it.")
        self.context = self.engine.create_execution_context()
        self._trt = trt
        inputs = self._io_names(trt.TensorIOMode.INPUT)
        self.limits = {name: tuple(int(d) for d in self.engine.get_tensor_profile_shape(name, 0)[2]) for name in inputs}
        self.input_dtypes = {name: np.dtype(trt.nptype(self.engine.get_tensor_dtype(name))) for name in inputs}
        return self

    def __exit__(self, *exc: Any) -> None:
        self.context = None
        self.engine = None

    def _io_names(self, mode: Any) -> list[str]:
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        return [n for n in names if self.engine.get_tensor_mode(n) == mode]

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        trt = self._trt
        keep = []
        for name in self._io_names(trt.TensorIOMode.INPUT):
            dtype = trt.nptype(self.engine.get_tensor_dtype(name))
            tensor = torch.from_numpy(np.ascontiguousarray(feed[name], dtype=dtype)).cuda()
            if not self.context.set_input_shape(name, tuple(tensor.shape)):
                raise ExportError(f"{self.name}: input {name!r} of shape {tuple(tensor.shape)} is outside the "
                                  f"engine's optimisation profile (largest {self.limits.get(name)}).")
            self.context.set_tensor_address(name, tensor.data_ptr())
            keep.append(tensor)
        outputs = {}
        for name in self._io_names(trt.TensorIOMode.OUTPUT):
            shape = tuple(self.context.get_tensor_shape(name))
            dtype = torch.from_numpy(np.zeros(0, trt.nptype(self.engine.get_tensor_dtype(name)))).dtype
            outputs[name] = torch.empty(shape, dtype=dtype, device="cuda")
            self.context.set_tensor_address(name, outputs[name].data_ptr())
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise ExportError(f"{self.name}: execution failed for input shapes "
                              f"{ {k: v.shape for k, v in feed.items()} }")
        stream.synchronize()
        return {k: v.cpu().numpy() for k, v in outputs.items()}
