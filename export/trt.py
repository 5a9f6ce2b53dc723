"""ONNX -> TensorRT engine (TensorRT 10.x and 11.x Python API), and the runner of built engines.

``tensorrt`` is imported inside the functions: ``import export.trt`` works on machines without it (this module is
light: no torch at import time either). TensorRT objects are annotated with TensorRT's own types (``tensorrt``
under ``TYPE_CHECKING``), and ``make typecheck`` checks this file against ``tensorrt-stubs`` (TensorRT 10.13's
stubs) with pyright, so a misspelled API name fails on a CPU machine, not on the GPU.

Precision follows the ONNX dtypes: every network is strongly typed (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``
on TensorRT 10; TensorRT 11 networks are always strongly typed and ignore the flag), so ``patch_encoder.fp16.onnx``
runs exactly where it says FP16. No weak-typing flag (``BuilderFlag.FP16``, removed in TensorRT 11) is ever set.
``BuilderFlag.TF32`` (on by default) is cleared unless ``tf32=True``: the FP32 islands of the FP16 engine
(spectral filter, normalisation, FRE statistics) then really run in FP32.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from spai.errors import ExportError
from spai.files import atomic_path
from spai.infer.runners import Runner
from spai.lazy import lazy_import

if TYPE_CHECKING:  # TensorRT's own types (tensorrt-stubs under pyright); imported at first use at run time
    import tensorrt as trt
    import torch
else:
    trt = lazy_import("tensorrt")
    torch = lazy_import("torch")

Shape = tuple[int, ...]
Profile = dict[str, tuple[Shape, Shape, Shape]]
MIN_MAJOR = 10


def tensorrt_importable() -> bool:
    """True where a real ``tensorrt`` module imports (not the empty namespace package that ``tensorrt-stubs``
    leaves in site-packages: ``tensorrt/__init__.pyi`` and no code)."""
    try:
        import tensorrt
    except ImportError:
        return False
    return hasattr(tensorrt, "Builder") and hasattr(tensorrt, "__version__")


def import_tensorrt() -> None:
    """Make sure ``import tensorrt`` gives TensorRT >= 10; :class:`ExportError` saying how to get it otherwise.
    (Callers then ``import tensorrt as trt`` themselves, so the type checker sees TensorRT's types.)"""
    try:
        import tensorrt
    except ImportError as e:
        raise ExportError("TensorRT is not installed (pip install '.[trt]' on a machine with an NVIDIA GPU, or use "
                          "the NGC TensorRT container); the ONNX files can still be served with onnxruntime.") from e
    if not tensorrt_importable():
        raise ExportError(f"`import tensorrt` found only type stubs ({list(getattr(tensorrt, '__path__', []))}: "
                          "the tensorrt-stubs package), not TensorRT; install TensorRT itself (pip install "
                          "'.[trt]') on a GPU machine.")
    major = int(str(tensorrt.__version__).split(".")[0])
    if major < MIN_MAJOR:
        raise ExportError(f"TensorRT {tensorrt.__version__} is too old; spai-deploy needs TensorRT >= {MIN_MAJOR}.")


def tensorrt_available() -> bool:
    """True where TensorRT imports and a CUDA GPU is visible."""
    if not tensorrt_importable():
        return False

    return torch.cuda.is_available()


def tensorrt_version() -> str:
    """The installed TensorRT's version string (after :func:`import_tensorrt`)."""
    import_tensorrt()

    return str(trt.__version__)


@dataclass(frozen=True)
class BuildOptions:
    """How ``engine_from_onnx`` configures the builder (the TensorRT arguments of ``spai export``)."""

    workspace_mb: int | None = None
    tf32: bool = False  # allow TF32 for FP32 layers (TensorRT's default); off = FP32 layers run in FP32
    version_compatible: bool = False  # BuilderFlag.VERSION_COMPATIBLE: later TensorRT runtimes can load the plan
    optimization_level: int | None = None  # builder_optimization_level (TensorRT default 3; 0-5)
    detailed_profiling: bool = False  # ProfilingVerbosity.DETAILED: layer information for the engine inspector
    verbose: bool = False


def _network(builder: trt.Builder, onnx_path: Path, logger: trt.ILogger) -> tuple[trt.INetworkDefinition,
                                                                                   trt.OnnxParser]:
    flags = 0
    # STRONGLY_TYPED: TensorRT >= 9. TensorRT 11 keeps the enum value but ignores it (always strongly typed).
    if hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [describe_parser_error(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ExportError(f"TensorRT cannot parse {onnx_path} ({len(errors)} error(s)):\n  " + "\n  ".join(errors))
    return network, parser


def describe_parser_error(err: trt.ParserError) -> str:
    """One line per ONNX parser error: code, description, node name / operator where TensorRT gives them."""
    parts = [str(err.desc())]
    for label, getter in (("node_name", err.node_name), ("node_operator", err.node_operator)):
        value = getter()
        if value:
            parts.append(f"{label}={value}")
    parts.append(f"node#{err.node()}")
    return f"[{err.code()}] " + ", ".join(parts)


def builder_flag_changes(flag_names: set[str], options: BuildOptions) -> tuple[list[str], list[str]]:
    """(flags to set, flags to clear) by name, for the flags this TensorRT has (pure: tested on CPU).

    TF32 is cleared unless asked for (TensorRT enables it by default); VERSION_COMPATIBLE is set on request and
    refused where this TensorRT lacks it. No precision flag is ever set: the networks are strongly typed.
    """
    to_set, to_clear = [], []
    if not options.tf32 and "TF32" in flag_names:
        to_clear.append("TF32")
    if options.version_compatible:
        if "VERSION_COMPATIBLE" not in flag_names:
            raise ExportError("this TensorRT cannot build version-compatible engines (no BuilderFlag."
                              "VERSION_COMPATIBLE); build without --version-compatible.")
        to_set.append("VERSION_COMPATIBLE")
    return to_set, to_clear


def _config(builder: trt.Builder, network: trt.INetworkDefinition, profile: Profile,
            options: BuildOptions) -> trt.IBuilderConfig:
    config = builder.create_builder_config()
    if options.workspace_mb:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_mb) << 20)
    if options.optimization_level is not None:
        config.builder_optimization_level = int(options.optimization_level)
    if options.detailed_profiling:
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    opt = builder.create_optimization_profile()
    inputs = {network.get_input(i).name for i in range(network.num_inputs)}
    missing = inputs - set(profile)
    if missing:
        raise ExportError(f"No optimisation-profile range for input(s) {sorted(missing)}.")
    for name in sorted(inputs):
        lo, mid, hi = profile[name]
        opt.set_shape(name, trt.Dims(list(lo)), trt.Dims(list(mid)), trt.Dims(list(hi)))
    config.add_optimization_profile(opt)
    to_set, to_clear = builder_flag_changes(set(trt.BuilderFlag.__members__), options)
    for name in to_set:
        config.set_flag(trt.BuilderFlag.__members__[name])
    for name in to_clear:
        config.clear_flag(trt.BuilderFlag.__members__[name])
    return config


def _timing_cache(config: trt.IBuilderConfig, path: Path | None) -> trt.ITimingCache:
    """Load ``path`` (or start an empty cache) into ``config``; refuse a cache TensorRT rejects."""
    blob = path.read_bytes() if path is not None and path.is_file() else b""
    cache = config.create_timing_cache(blob)
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        raise ExportError(f"TensorRT rejected the timing cache {path} (made by another TensorRT version or GPU); "
                          "delete it or pass another --timing-cache.")
    return cache


def engine_from_onnx(onnx_path: str | os.PathLike, plan_path: str | os.PathLike, profile: Profile, *,
                     timing_cache: str | os.PathLike | None = None,
                     options: BuildOptions = BuildOptions()) -> Path:
    """Build a serialized engine (``.plan``) from ONNX with one optimisation profile covering ``profile``
    (input name -> (min, opt, max) shapes, see :func:`spai.model.specs.trt_profile`). The timing cache, if given, is
    loaded and written back. Nothing is left at ``plan_path`` if the build fails."""
    import_tensorrt()

    logger = trt.Logger(trt.Logger.VERBOSE if options.verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network, _parser = _network(builder, Path(onnx_path), logger)
    config = _config(builder, network, profile, options)
    cache_path = Path(timing_cache) if timing_cache else None
    _timing_cache(config, cache_path)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"TensorRT failed to build an engine from {onnx_path}; rerun with verbose logging "
                          "or a larger --workspace.")
    plan = Path(plan_path)
    with atomic_path(plan) as tmp:
        tmp.write_bytes(bytes(memoryview(serialized)))
    if cache_path is not None:
        with atomic_path(cache_path) as tmp:
            tmp.write_bytes(bytes(memoryview(config.get_timing_cache().serialize())))
    return plan


def engine_device_memory(engine: trt.ICudaEngine) -> int:
    """Bytes of device memory an execution context of ``engine`` needs (activations, scratch)."""
    # TensorRT 11 removed ICudaEngine.device_memory_size; device_memory_size_v2 exists since TensorRT 10.1.
    if hasattr(engine, "device_memory_size_v2"):
        return int(engine.device_memory_size_v2)
    return int(engine.device_memory_size)


def engine_layer_information(plan_path: str | os.PathLike, version_compatible: bool = False) -> str:
    """The engine inspector's JSON layer information (per-layer precision, tactic/kernel names with
    ``detailed_profiling`` builds): how to see that attention runs as one fused kernel."""
    import_tensorrt()

    engine = _deserialize(Path(plan_path), version_compatible)
    inspector = engine.create_engine_inspector()
    return str(inspector.get_engine_information(trt.LayerInformationFormat.JSON))


def _deserialize(path: Path, version_compatible: bool) -> trt.ICudaEngine:
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    if version_compatible:  # a version-compatible plan carries its lean runtime: host code to trust and run
        runtime.engine_host_code_allowed = True
    engine = runtime.deserialize_cuda_engine(path.read_bytes())
    if engine is None:
        raise ExportError(f"{path} does not load with TensorRT {trt.__version__} on this GPU (plans load only on "
                          "the TensorRT and GPU architecture that built them; see its engine.json); rebuild it.")
    return engine


class BufferPool:
    """Buffers kept per name and handed out as views: what the runner binds to the engine.

    ``allocate(shape, dtype)`` makes one (device memory, or pinned host memory for staging). A request for a shape
    that fits the name's buffer gets a contiguous view of its first elements; only a larger size (or another dtype)
    allocates, and then the larger buffer replaces the old one. Chunks that alternate between the profile's batch
    and a remainder therefore allocate once each way up, never per call (pinned memory is a cudaHostAlloc).
    ``allocations`` counts the allocations.
    """

    def __init__(self, allocate: Callable[[Shape, Any], torch.Tensor]) -> None:
        self._allocate = allocate
        self._buffers: dict[str, torch.Tensor] = {}
        self.allocations = 0

    def get(self, name: str, shape: Shape, dtype: Any) -> torch.Tensor:
        size = int(np.prod(shape, dtype=np.int64))
        buf = self._buffers.get(name)
        if buf is None or buf.numel() < size or buf.dtype != dtype:
            buf = self._allocate((size,), dtype)
            self._buffers[name] = buf
            self.allocations += 1
        return buf[:size].view(tuple(shape))

    def clear(self) -> None:
        self._buffers.clear()


ADDRESS_ALIGNMENT = 256  # bytes: IExecutionContext.setTensorAddress wants I/O addresses aligned to 256


def needs_staging(tensor: torch.Tensor) -> bool:
    """True where TensorRT cannot read ``tensor`` in place: not contiguous, or its address (a slice's offset)
    not aligned to :data:`ADDRESS_ALIGNMENT` bytes."""
    return not tensor.is_contiguous() or tensor.data_ptr() % ADDRESS_ALIGNMENT != 0


def staged_inputs(inputs: dict[str, torch.Tensor], pool: BufferPool) -> dict[str, torch.Tensor]:
    """The inputs TensorRT can bind as they are, and copies of the others in ``pool``'s own buffers (allocated
    aligned, kept by the runner), made on the current stream."""
    staged = {}
    for name, tensor in inputs.items():
        if needs_staging(tensor):
            buffer = pool.get(f"in:{name}", tuple(tensor.shape), tensor.dtype)
            buffer.copy_(tensor)
            tensor = buffer
        staged[name] = tensor
    return staged


def torch_dtype(np_dtype: np.dtype) -> torch.dtype:
    """The torch dtype of a numpy dtype (uint8, bool, float16, float32, int32, int64)."""
    return torch.from_numpy(np.zeros(0, np_dtype)).dtype


class TrtRunner(Runner):
    """Runs a serialized engine (optimisation profile 0) on one CUDA device, on a stream of its own.

    Declares the engine's own limits and minimums (the largest and smallest shape of profile 0 per input) and dtypes:
    a batch below the minimum is padded by :meth:`spai.infer.runners.Runner.infer`. Device buffers and the pinned host
    staging buffers grow to the largest shape seen and are reused as views (:class:`BufferPool`); :meth:`infer`
    copies numpy inputs through pinned memory on the runner's stream, :meth:`infer_device` takes tensors already
    on the device (what the benchmark times). ``device_memory_bytes``: the execution context's own memory.
    """

    def __init__(self, plan_path: str | os.PathLike, *, version_compatible: bool = False, device: int = 0) -> None:
        super().__init__()
        self.path = Path(plan_path)
        self.name = f"trt:{self.path.name}"
        self.version_compatible, self.device_index = version_compatible, device
        self.engine: trt.ICudaEngine | None = None
        self.context: trt.IExecutionContext | None = None
        self.stream: torch.cuda.Stream | None = None
        self.device_memory_bytes = 0
        self.inputs: list[str] = []
        self.outputs: list[str] = []

    def __enter__(self) -> TrtRunner:
        import_tensorrt()

        engine = _deserialize(self.path, self.version_compatible)
        context = engine.create_execution_context()
        if context is None:
            raise ExportError(f"{self.name}: TensorRT could not create an execution context (GPU memory?).")
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        shapes = {n: engine.get_tensor_profile_shape(n, 0) for n in self.inputs}
        self.limits = {n: tuple(int(d) for d in shapes[n][2]) for n in self.inputs}
        self.minimums = {n: tuple(int(d) for d in shapes[n][0]) for n in self.inputs}
        self.dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in names}
        self.input_dtypes = {n: self.dtypes[n] for n in self.inputs}
        self.device = torch.device("cuda", self.device_index)
        self.stream = torch.cuda.Stream(self.device)
        self.device_memory_bytes = engine_device_memory(engine)
        self._device = BufferPool(lambda shape, dtype: torch.empty(shape, dtype=dtype, device=self.device))
        self._host = BufferPool(lambda shape, dtype: torch.empty(shape, dtype=dtype, pin_memory=True))
        self.engine, self.context = engine, context
        return self

    def __exit__(self, *exc: object) -> None:
        if self.stream is not None:
            self.stream.synchronize()
        for pool in (getattr(self, "_device", None), getattr(self, "_host", None)):
            if pool is not None:
                pool.clear()
        self.context = self.engine = self.stream = None

    def _bind(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Set input shapes and addresses, bind this shape's output buffers, run on the runner's stream."""
        context, stream = self.context, self.stream
        if context is None or stream is None:
            raise RuntimeError(f"{self.name}: use it as a context manager (with TrtRunner(...) as r:)")
        for name in self.inputs:
            tensor = inputs[name]
            if not context.set_input_shape(name, tuple(tensor.shape)):
                raise ExportError(f"{self.name}: input {name!r} of shape {tuple(tensor.shape)} is outside the "
                                  f"engine's optimisation profile (largest {self.limits.get(name)}).")
            context.set_tensor_address(name, tensor.data_ptr())
        outputs = {}
        for name in self.outputs:
            shape = tuple(int(d) for d in context.get_tensor_shape(name))
            outputs[name] = self._device.get(name, shape, torch_dtype(self.dtypes[name]))
            context.set_tensor_address(name, outputs[name].data_ptr())
        if not context.execute_async_v3(stream.cuda_stream):
            raise ExportError(f"{self.name}: execution failed for input shapes "
                              f"{ {k: tuple(v.shape) for k, v in inputs.items()} }")
        return outputs

    def infer_device(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Tensors already on the device in, device tensors out (the runner's buffers: valid until the next call;
        ordered after this call on the caller's current stream). No host copy."""
        assert self.stream is not None, f"{self.name}: use it as a context manager"
        for name in self.inputs:
            want = torch_dtype(self.dtypes[name])
            if inputs[name].dtype != want or inputs[name].device != self.device:
                raise ExportError(f"{self.name}: input {name!r} must be {want} on {self.device}, not "
                                  f"{inputs[name].dtype} on {inputs[name].device}.")
        caller = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(caller)  # the inputs were produced on the caller's stream
        with torch.cuda.stream(self.stream):
            # a copy (non-contiguous or misaligned input) runs on the runner's stream, before the engine, into the
            # runner's own buffers: never a temporary the engine may still read once this call returns
            staged = staged_inputs(inputs, self._device)
            for tensor in inputs.values():
                tensor.record_stream(self.stream)  # the caller's tensors stay allocated until the engine is done
            outputs = self._bind(staged)
        caller.wait_stream(self.stream)
        return outputs

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        stream = self.stream
        if stream is None:
            raise RuntimeError(f"{self.name}: use it as a context manager (with TrtRunner(...) as r:)")
        with torch.cuda.stream(stream):
            staged = {}
            for name in self.inputs:
                array = np.ascontiguousarray(feed[name], dtype=self.dtypes[name])
                host = self._host.get(name, array.shape, torch_dtype(array.dtype))
                host.numpy()[...] = array
                staged[name] = self._device.get(f"in:{name}", array.shape, host.dtype)
                staged[name].copy_(host, non_blocking=True)
            outputs = self._bind(staged)
            results = {}
            for name, tensor in outputs.items():
                results[name] = self._host.get(f"out:{name}", tuple(tensor.shape), tensor.dtype)
                results[name].copy_(tensor, non_blocking=True)
        stream.synchronize()
        return {name: host.numpy().copy() for name, host in results.items()}
