"""One runner family (Polygraphy's pattern): ``with runner: runner.infer(feed) -> outputs``, keyed by the tensor
names of :mod:`spai.model.specs`, for PyTorch, ONNX Runtime, TensorRT (:class:`export.trt.TrtRunner`) and Triton's BLS
calls (the ``spai`` Triton model).

Every runner declares its **limits**: the largest shape each input accepts (``None`` on an axis = any size), from
the tensor spec, the engine's optimisation profile or its own memory budget. :mod:`spai.infer.scorer` chunks patches
and groups images by them, never by a default, and :meth:`Runner.infer` refuses a feed beyond them, as a
TensorRT context refuses a shape outside its profile. It also declares the **dtype** it takes patches in: the
exported graphs take uint8 (:data:`spai.model.specs.PATCHES_INPUT`), the PyTorch model floats (so float images are
scored exactly). This module imports neither torch nor onnxruntime at import time.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from spai.errors import ConfigError, ExportError
from spai.model.specs import ATTENTION, ENCODER_FILES, LOGITS, PATCH_FEATURES, PATCH_MASK, PATCHES, PATCHES_INPUT

if TYPE_CHECKING:  # the runners take the model; importing it at run time would load torch
    from spai.model.nn.spai_model import SPAIModel

Feed = dict[str, np.ndarray]
Limits = dict[str, tuple[int | None, ...]]  # input name -> largest sizes of its leading axes, batch axis first

# Patches per encoder call on a CPU, per route: the smallest chunk within 5% of the best throughput measured on a
# 2-core AMD EPYC (spai-b16, chunks 1-8; docs/benchmarks.md, "Chunk sizes"), and within the memory goal (1.25x the
# original's one-patch-per-call peak: torch bf16 at 2 patches would exceed it). Memory follows the chunk. One
# patch a call also keeps the int8 route batch independent (its activations are quantised per call).
CPU_CHUNKS = {("torch", "fp32"): 2, ("torch", "bf16"): 1, ("ort", "fp32"): 1, ("ort", "int8"): 1}
CPU_MAX_CHUNK = CPU_CHUNKS[("torch", "fp32")]  # the torch fp32 path's default (torch_chunk)


def torch_chunk(model: SPAIModel) -> int:
    """Patches per torch encoder call by default: the config's FEATURE_EXTRACTION_BATCH, capped at
    :data:`CPU_MAX_CHUNK` on a CPU to bound host memory."""
    chunk = int(model.cfg.MODEL.FEATURE_EXTRACTION_BATCH or CPU_MAX_CHUNK)
    return chunk if model.device.type == "cuda" else min(chunk, CPU_MAX_CHUNK)


def available_cores() -> int:
    """Cores this process may run on (affinity-aware): the default thread count of every CPU runner."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


class Runner:
    """Base class: a context manager with ``infer(feed) -> outputs`` and declared ``limits``."""

    name = "runner"

    def __init__(self, limits: Limits | None = None, input_dtypes: dict[str, np.dtype] | None = None,
                 minimums: Limits | None = None) -> None:
        self.limits: Limits = dict(limits or {})
        self.input_dtypes: dict[str, np.dtype] = dict(input_dtypes or {})
        # The smallest sizes each input accepts (a TensorRT profile's minimum): infer() pads the batch axis up to
        # it; a caller pads any other axis (spai.infer.scorer pads the aggregator's patch axis with masked rows).
        self.minimums: Limits = dict(minimums or {})

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def max_dim(self, name: str, axis: int = 0) -> int | None:
        """The largest size of axis ``axis`` of input ``name`` (None: not limited)."""
        shape = self.limits.get(name)
        return shape[axis] if shape is not None and axis < len(shape) else None

    def min_dim(self, name: str, axis: int = 0) -> int:
        """The smallest size of axis ``axis`` of input ``name`` (1: not limited)."""
        shape = self.minimums.get(name)
        return (shape[axis] or 1) if shape is not None and axis < len(shape) else 1

    def input_dtype(self, name: str = PATCHES) -> np.dtype:
        """The dtype input ``name`` is fed in (default: the spec's, :data:`spai.model.specs.PATCHES_INPUT` for patches)."""
        return np.dtype(self.input_dtypes.get(name, PATCHES_INPUT.dtype if name == PATCHES else "float32"))

    def check_feed(self, feed: Feed) -> None:
        """:class:`ExportError` naming the input when a feed exceeds the declared limits or is below the minimums."""
        for name, limit in self.limits.items():
            if name not in feed:
                continue
            shape = np.shape(feed[name])
            if len(shape) < len(limit) or any(m is not None and d > m for d, m in zip(shape, limit, strict=False)):
                raise ExportError(f"{self.name}: input {name!r} of shape {tuple(shape)} is outside the declared "
                                  f"limits {limit}; the caller must chunk by Runner.limits.")
        for name, smallest in self.minimums.items():
            shape = np.shape(feed[name]) if name in feed else ()
            if any(m is not None and d < m for d, m in zip(shape, smallest, strict=False)):
                raise ExportError(f"{self.name}: input {name!r} of shape {tuple(shape)} is below the declared "
                                  f"minimum {smallest}; the caller must pad by Runner.minimums.")

    def infer(self, feed: Feed) -> Feed:
        """Outputs by name for one batch; a batch below :attr:`minimums` is padded (and its outputs cut back),
        a feed beyond :attr:`limits` refused."""
        padded, rows = self._padded(feed)
        self.check_feed(padded)
        return _first_rows(self._infer(padded), rows)

    def _padded(self, feed: Feed) -> tuple[Feed, int | None]:
        """(feed with its batch axis zero-padded up to the declared minimum, the real batch or None if unpadded).
        Every tensor of a feed shares the batch axis; the padded rows' outputs are dropped, so their values (zero
        pixels, an all-False mask) never reach a result."""
        smallest = max((self.min_dim(name) for name in feed), default=1)
        rows = len(next(iter(feed.values()))) if feed else 0
        if rows >= smallest:
            return feed, None
        return {k: np.concatenate([v, np.zeros((smallest - rows, *v.shape[1:]), v.dtype)])
                for k, v in feed.items()}, rows

    def _infer(self, feed: Feed) -> Feed:
        raise NotImplementedError

    async def infer_async(self, feed: Feed) -> Feed:
        """:meth:`infer` as a coroutine, so that a caller can keep several calls in flight
        (:func:`spai.infer.scorer.infer_in_flight`). Runners that can (Triton BLS: ``async_exec``) override
        :meth:`_infer_async`; the others answer at once."""
        padded, rows = self._padded(feed)
        self.check_feed(padded)
        return _first_rows(await self._infer_async(padded), rows)

    async def _infer_async(self, feed: Feed) -> Feed:
        return self._infer(feed)

    def infer_many(self, feeds: Sequence[Feed]) -> list[Feed]:
        """Several batch-first feeds -> their outputs; feeds of equal non-batch shapes run together, in batches
        no larger than the limits allow (what a Triton dynamic batch needs)."""
        results: list[Feed | None] = [None] * len(feeds)
        for group in _batches_within(feeds, self._batch_limit()):
            batch = {k: np.concatenate([feeds[i][k] for i in group]) for k in feeds[group[0]]}
            sizes = [len(next(iter(feeds[i].values()))) for i in group]
            for i, part in zip(group, _split_outputs(self.infer(batch), sizes), strict=False):
                results[i] = part
        return results  # type: ignore[return-value]

    def _batch_limit(self) -> int | None:
        sizes = [shape[0] for shape in self.limits.values() if shape and shape[0] is not None]
        return min(sizes) if sizes else None


@dataclass
class Route:
    """One way of scoring: its ``name`` (``torch-fp32``, ``ort-int8``, ``trt-fp16``, ...), the ``precision`` its
    encoder computes in, and the encoder and aggregator runners, entered and left together (``with route:``)."""

    name: str
    precision: str
    encoder: Runner
    aggregator: Runner
    _stack: contextlib.ExitStack | None = field(default=None, init=False, repr=False, compare=False)

    def __enter__(self) -> Route:
        with contextlib.ExitStack() as stack:
            stack.enter_context(self.encoder)
            stack.enter_context(self.aggregator)
            self._stack = stack.pop_all()  # both entered: keep them open until __exit__
        return self

    def __exit__(self, *exc: object) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.close()


def _first_rows(outputs: Feed, rows: int | None) -> Feed:
    """Outputs without the rows a padded batch added (all outputs are batch-first, as the specs declare)."""
    return outputs if rows is None else {k: v[:rows] for k, v in outputs.items()}


def _batches_within(feeds: Sequence[Feed], limit: int | None) -> Iterator[list[int]]:
    """Indices of feeds grouped by non-batch shapes and dtypes (first-seen order), each group cut so that its
    summed batch stays within ``limit`` (a single feed over it forms its own group and is refused later)."""
    groups: dict[tuple, list[int]] = {}
    for i, feed in enumerate(feeds):
        groups.setdefault(tuple(sorted((k, v.shape[1:], v.dtype.str) for k, v in feed.items())), []).append(i)
    for members in groups.values():
        batch: list[int] = []
        total = 0
        for i in members:
            size = len(next(iter(feeds[i].values())))
            if batch and limit is not None and total + size > limit:
                yield batch
                batch, total = [], 0
            batch.append(i)
            total += size
        yield batch


def _split_outputs(outputs: Feed, sizes: Sequence[int]) -> list[Feed]:
    bounds = np.cumsum(sizes)[:-1]
    pieces = {k: np.split(v, bounds) for k, v in outputs.items()}
    return [{k: pieces[k][j] for k in outputs} for j in range(len(sizes))]


GRAPHS = ("patch_encoder", "aggregator")
ORT_DTYPES = {"tensor(float)": np.dtype(np.float32), "tensor(float16)": np.dtype(np.float16),
              "tensor(uint8)": np.dtype(np.uint8), "tensor(bool)": np.dtype(bool), "tensor(int64)": np.dtype(np.int64)}


class TorchRunner(Runner):
    """Eager PyTorch on the model's device: ``graph`` is ``"patch_encoder"`` or ``"aggregator"``.

    The encoder declares ``max_batch`` patches (default: the model's chunk size, which bounds memory) and takes
    float32 patches (uint8 ones too: ``encode_patches`` scales them as the graph does); the aggregator is
    unlimited. Outputs are float32 numpy; ``attention`` is the mean over heads, as exported. The aggregator always
    runs in fp32; ``precision`` is the encoder's:

    * ``bf16`` on a CPU: bf16 GEMMs through oneDNN (:class:`spai.model.nn.precision.Bf16Gemms`) but for the GEMM
      weights named in ``keep_fp32`` (None: the route's, :func:`spai.model.nn.precision.bf16_fp32_layers`).
    * ``fp16`` / ``bf16`` under ``torch.autocast`` (``autocast``; the default on a GPU, and what the python-torch
      Triton models run): fp16/bf16 matmuls and convolutions, while the model keeps its views, normalisation,
      statistics and aggregator in fp32 (:func:`spai.model.nn.precision.full_precision`). On a CPU only when asked
      for (``autocast=True``: tests gate GPU routes on CPU autocast).
    """

    def __init__(self, model: SPAIModel, graph: str, max_batch: int | None = None, precision: str = "fp32",
                 keep_fp32: Collection[str] | None = None, autocast: bool | None = None) -> None:
        if graph not in GRAPHS:
            raise ValueError(f"graph must be one of {GRAPHS}, not {graph!r}")
        on_gpu = getattr(model.device, "type", "cpu") != "cpu"
        self.autocast = precision in AUTOCAST_DTYPES and (on_gpu if autocast is None else autocast)
        _check_torch_precision(precision, on_gpu, self.autocast)
        limits: Limits = {PATCHES: (max_batch or torch_chunk(model), *PATCHES_INPUT.shape)} \
            if graph == "patch_encoder" else {}
        super().__init__(limits, {PATCHES: np.dtype(np.float32)})
        self.model, self.graph, self.precision = model, graph, precision
        self.keep_fp32 = None if keep_fp32 is None else frozenset(keep_fp32)
        self.name = f"torch:{graph}" + (f":{precision}" if precision != "fp32" else "") \
            + (":autocast" if self.autocast else "")
        self._mode: Any = None

    def _precision_mode(self) -> Any:
        """The encoder's precision: autocast, the bf16 GEMM mode (weights cast once, on first use) or a no-op."""
        if self.precision == "fp32" or self.graph != "patch_encoder":
            return contextlib.nullcontext()
        import torch

        if self.autocast:
            return torch.autocast(self.model.device.type, dtype=getattr(torch, AUTOCAST_DTYPES[self.precision]))
        if self._mode is None:
            from spai.model.nn.precision import Bf16Gemms, bf16_fp32_layers, gemm_weights

            if not isinstance(self.model, torch.nn.Module):  # bf16 casts a torch module's GEMM weights
                raise ConfigError("the bf16 route runs a PyTorch model (spai.create_model(...)); this one is not "
                                  "a torch.nn.Module: use --precision fp32.")
            keep = bf16_fp32_layers(self.model) if self.keep_fp32 is None else self.keep_fp32
            self._mode = Bf16Gemms(gemm_weights(self.model), keep)
        return self._mode

    def __exit__(self, *exc: object) -> None:
        self._mode = None  # frees the bf16 weight copies

    def _infer(self, feed: Feed) -> Feed:
        import torch

        device = self.model.device
        with torch.no_grad():
            if self.graph == "patch_encoder":
                patches = torch.from_numpy(np.ascontiguousarray(feed[PATCHES])).to(device)
                with self._precision_mode():
                    out = self.model.encode_patches(patches)
                return {PATCH_FEATURES: out.float().cpu().numpy()}
            feats = torch.from_numpy(np.ascontiguousarray(feed[PATCH_FEATURES])).to(device)
            mask = torch.from_numpy(np.ascontiguousarray(feed[PATCH_MASK])).to(device)
            logits, attention = self.model.aggregate(feats, mask, return_attention=True)
        return {LOGITS: logits.float().cpu().numpy(), ATTENTION: attention.mean(dim=1).float().cpu().numpy()}


AUTOCAST_DTYPES = {"fp16": "float16", "bf16": "bfloat16"}  # torch dtype names of the autocast precisions


def _check_torch_precision(precision: str, on_gpu: bool, autocast: bool) -> None:
    """:class:`ConfigError` for a precision the torch runner cannot run where the model is."""
    if precision not in ("fp32", *AUTOCAST_DTYPES):
        raise ConfigError(f"the torch runner runs fp32, fp16 or bf16, not {precision!r}; int8 runs through ONNX "
                          "Runtime (backend 'ort').")
    if on_gpu and precision != "fp32" and not autocast:
        raise ConfigError("on a GPU the torch fp16 / bf16 routes run under torch.autocast; the bf16 GEMM mode is a "
                          "CPU route.")
    if not on_gpu and precision == "fp16" and not autocast:
        raise ConfigError("fp16 is a GPU precision (torch.autocast, or a TensorRT engine); on a CPU use "
                          "--precision bf16 or int8.")


class OrtRunner(Runner):
    """An ONNX Runtime session over one exported graph (CPU unless ``providers`` says otherwise).

    ``threads``: intra-op threads (default: the cores available to this process). ``limits`` / ``minimums``:
    declared largest / smallest shapes, e.g. a TensorRT profile's so that CPU checks chunk and pad like the engine;
    without them an encoder declares :data:`CPU_CHUNKS` patches for its graph's precision (memory and speed,
    measured) and an aggregator is unlimited. ``bounded_memory`` (default on the CPU provider): memory follows the
    chunk, not the largest batch ever seen -- see :func:`ort_session_options`.
    """

    def __init__(self, onnx_path: str | os.PathLike, providers: Sequence[str] | None = None,
                 threads: int | None = None, limits: Limits | None = None,
                 bounded_memory: bool | None = None, minimums: Limits | None = None) -> None:
        super().__init__(limits, minimums=minimums)
        self.path = Path(onnx_path)
        self.providers = list(providers or ["CPUExecutionProvider"])
        self.threads = threads
        self.bounded_memory = self.providers[0] == "CPUExecutionProvider" if bounded_memory is None \
            else bounded_memory
        self.name = f"ort:{self.path.name}"
        self.session: Any = None
        self.run_options: Any = None

    def __enter__(self) -> OrtRunner:
        import onnxruntime as ort

        if not self.path.is_file():
            raise ExportError(f"{self.path}: ONNX file not found; export the model first (`spai export`"
                              f"{' --precision int8' if self.path.name == ENCODER_FILES['int8'] else ''}).")
        opts, self.run_options = ort_session_options(self.threads or available_cores(), self.bounded_memory)
        self.session = ort.InferenceSession(str(self.path), opts, providers=self.providers)
        self.input_dtypes = {i.name: ORT_DTYPES.get(i.type, np.dtype(np.float32)) for i in self.session.get_inputs()}
        if PATCHES in self.input_dtypes and PATCHES not in self.limits:
            precision = "int8" if self.path.name == ENCODER_FILES["int8"] else "fp32"
            self.limits[PATCHES] = (CPU_CHUNKS[("ort", precision)], *PATCHES_INPUT.shape)
        return self

    def __exit__(self, *exc: object) -> None:
        self.session = None

    def _infer(self, feed: Feed) -> Feed:
        if self.session is None:
            raise RuntimeError(f"{self.name}: use it as a context manager (with OrtRunner(...) as r:)")
        names = [o.name for o in self.session.get_outputs()]
        return dict(zip(names, self.session.run(names, feed, self.run_options), strict=False))


def ort_session_options(threads: int, bounded_memory: bool = True) -> tuple[Any, Any]:
    """(SessionOptions, RunOptions) of every ORT runner: ``threads`` intra-op threads and, with
    ``bounded_memory``, memory that follows the current call (measured in docs/benchmarks.md, "Bounded memory"):
    no memory patterns (ORT would keep one pre-planned block per input shape it has seen) and the CPU arena
    shrunk back after every run (``memory.enable_memory_arena_shrinkage``), so that a peak chunk's buffers are
    returned instead of being kept for the life of the session."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    run = None
    if bounded_memory:
        opts.enable_mem_pattern = False
        run = ort.RunOptions()
        run.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    return opts, run


def preferred_providers() -> list[str]:
    """ONNX Runtime providers, best first: CUDA where this onnxruntime build has it, then CPU."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
