"""One runner family (Polygraphy's pattern): ``with runner: runner.infer(feed) -> outputs``, keyed by the tensor
names of :mod:`spai.specs`, for PyTorch, ONNX Runtime, TensorRT (:class:`export.trt.TrtRunner`) and Triton's BLS
calls (the ``spai`` Triton model).

Every runner declares its **limits**: the largest shape each input accepts (``None`` on an axis = any size), from
the tensor spec, the engine's optimisation profile or its own memory budget. :mod:`spai.inference` chunks patches
and groups images by them, never by a default, and :meth:`Runner.infer` refuses a feed beyond them, as a
TensorRT context refuses a shape outside its profile. It also declares the **dtype** it takes patches in: the
exported graphs take uint8 (:data:`spai.specs.PATCHES_INPUT`), the PyTorch model floats (so float images are
scored exactly). This module imports neither torch nor onnxruntime at import time.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from spai.errors import ExportError
from spai.specs import ATTENTION, LOGITS, PATCH_FEATURES, PATCH_MASK, PATCHES, PATCHES_INPUT

Feed = dict[str, np.ndarray]
Limits = dict[str, tuple[int | None, ...]]  # input name -> largest sizes of its leading axes, batch axis first
CPU_MAX_CHUNK = 16  # patches per encoder call on a CPU: bounds host memory (results are batch independent)


def available_cores() -> int:
    """Cores this process may run on (affinity-aware): the default thread count of every CPU runner."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


class Runner:
    """Base class: a context manager with ``infer(feed) -> outputs`` and declared ``limits``."""

    name = "runner"

    def __init__(self, limits: Limits | None = None, input_dtypes: dict[str, np.dtype] | None = None) -> None:
        self.limits: Limits = dict(limits or {})
        self.input_dtypes: dict[str, np.dtype] = dict(input_dtypes or {})

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def max_dim(self, name: str, axis: int = 0) -> int | None:
        """The largest size of axis ``axis`` of input ``name`` (None: not limited)."""
        shape = self.limits.get(name)
        return shape[axis] if shape is not None and axis < len(shape) else None

    def input_dtype(self, name: str = PATCHES) -> np.dtype:
        """The dtype input ``name`` is fed in (default: the spec's, :data:`spai.specs.PATCHES_INPUT` for patches)."""
        return np.dtype(self.input_dtypes.get(name, PATCHES_INPUT.dtype if name == PATCHES else "float32"))

    def check_feed(self, feed: Feed) -> None:
        """:class:`ExportError` naming the input when a feed exceeds the declared limits."""
        for name, limit in self.limits.items():
            if name not in feed:
                continue
            shape = np.shape(feed[name])
            if len(shape) < len(limit) or any(m is not None and d > m for d, m in zip(shape, limit)):
                raise ExportError(f"{self.name}: input {name!r} of shape {tuple(shape)} is outside the declared "
                                  f"limits {limit}; the caller must chunk by Runner.limits.")

    def infer(self, feed: Feed) -> Feed:
        """Outputs by name for one batch; refuses feeds beyond :attr:`limits`."""
        self.check_feed(feed)
        return self._infer(feed)

    def _infer(self, feed: Feed) -> Feed:
        raise NotImplementedError

    async def infer_async(self, feed: Feed) -> Feed:
        """:meth:`infer` as a coroutine, so that a caller can keep several calls in flight
        (:func:`spai.inference.infer_in_flight`). Runners that can (Triton BLS: ``async_exec``) override
        :meth:`_infer_async`; the others answer at once."""
        self.check_feed(feed)
        return await self._infer_async(feed)

    async def _infer_async(self, feed: Feed) -> Feed:
        return self._infer(feed)

    def infer_many(self, feeds: Sequence[Feed]) -> list[Feed]:
        """Several batch-first feeds -> their outputs; feeds of equal non-batch shapes run together, in batches
        no larger than the limits allow (what a Triton dynamic batch needs)."""
        results: list[Feed | None] = [None] * len(feeds)
        for group in _batches_within(feeds, self._batch_limit()):
            batch = {k: np.concatenate([feeds[i][k] for i in group]) for k in feeds[group[0]]}
            sizes = [len(next(iter(feeds[i].values()))) for i in group]
            for i, part in zip(group, _split_outputs(self.infer(batch), sizes)):
                results[i] = part
        return results  # type: ignore[return-value]

    def _batch_limit(self) -> int | None:
        sizes = [shape[0] for shape in self.limits.values() if shape and shape[0] is not None]
        return min(sizes) if sizes else None


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
    unlimited. Outputs are float32 numpy; ``attention`` is the mean over heads, as exported.
    """

    def __init__(self, model: Any, graph: str, max_batch: int | None = None) -> None:
        if graph not in GRAPHS:
            raise ValueError(f"graph must be one of {GRAPHS}, not {graph!r}")
        limits = {PATCHES: (max_batch or model.default_chunk_size(), *PATCHES_INPUT.shape)} \
            if graph == "patch_encoder" else {}
        super().__init__(limits, {PATCHES: np.dtype(np.float32)})
        self.model, self.graph, self.name = model, graph, f"torch:{graph}"

    def _infer(self, feed: Feed) -> Feed:
        import torch

        device = self.model.device
        with torch.no_grad():
            if self.graph == "patch_encoder":
                out = self.model.encode_patches(torch.from_numpy(np.ascontiguousarray(feed[PATCHES])).to(device))
                return {PATCH_FEATURES: out.float().cpu().numpy()}
            feats = torch.from_numpy(np.ascontiguousarray(feed[PATCH_FEATURES])).to(device)
            mask = torch.from_numpy(np.ascontiguousarray(feed[PATCH_MASK])).to(device)
            logits, attention = self.model.aggregate(feats, mask, return_attention=True)
        return {LOGITS: logits.float().cpu().numpy(), ATTENTION: attention.mean(dim=1).float().cpu().numpy()}


class OrtRunner(Runner):
    """An ONNX Runtime session over one exported graph (CPU unless ``providers`` says otherwise).

    ``threads``: intra-op threads (default: the cores available to this process). ``limits``: declared largest
    shapes, e.g. a TensorRT profile's maximum so that CPU tests chunk like the engine; without them an encoder
    declares :data:`CPU_MAX_CHUNK` patches (memory) and an aggregator is unlimited.
    """

    def __init__(self, onnx_path: str | os.PathLike, providers: Sequence[str] | None = None,
                 threads: int | None = None, limits: Limits | None = None) -> None:
        super().__init__(limits)
        self.path = Path(onnx_path)
        self.providers = list(providers or ["CPUExecutionProvider"])
        self.threads = threads
        self.name = f"ort:{self.path.name}"
        self.session: Any = None

    def __enter__(self) -> OrtRunner:
        import onnxruntime as ort

        if not self.path.is_file():
            raise ExportError(f"{self.path}: ONNX file not found; export the model first (`spai export`).")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads or available_cores()
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(self.path), opts, providers=self.providers)
        self.input_dtypes = {i.name: ORT_DTYPES.get(i.type, np.dtype(np.float32)) for i in self.session.get_inputs()}
        if PATCHES in self.input_dtypes and PATCHES not in self.limits:
            self.limits[PATCHES] = (CPU_MAX_CHUNK, *PATCHES_INPUT.shape)
        return self

    def __exit__(self, *exc: object) -> None:
        self.session = None

    def _infer(self, feed: Feed) -> Feed:
        if self.session is None:
            raise RuntimeError(f"{self.name}: use it as a context manager (with OrtRunner(...) as r:)")
        names = [o.name for o in self.session.get_outputs()]
        return dict(zip(names, self.session.run(names, feed)))


def preferred_providers() -> list[str]:
    """ONNX Runtime providers, best first: CUDA where this onnxruntime build has it, then CPU."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
