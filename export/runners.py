"""Backends behind one interface (Polygraphy-style): context managers with
``infer(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]`` keyed by the tensor names of :mod:`export.specs`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from export.specs import aggregator_spec, patch_encoder_spec
from export.trt import TrtRunner

__all__ = ["OrtRunner", "Runner", "TorchRunner", "TrtRunner"]


class Runner:
    """Base class: ``with runner: runner.infer(feed)``."""

    name = "runner"

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError


class TorchRunner(Runner):
    """Eager PyTorch FP32: ``graph`` is ``"patch_encoder"`` or ``"aggregator"``."""

    def __init__(self, model: torch.nn.Module, graph: str) -> None:
        if graph not in ("patch_encoder", "aggregator"):
            raise ValueError(f"graph must be 'patch_encoder' or 'aggregator', not {graph!r}")
        self.model, self.graph, self.name = model, graph, f"torch:{graph}"

    @torch.no_grad()
    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        dim = self.model.feature_dim
        if self.graph == "patch_encoder":
            out = self.model.encode_patches(torch.from_numpy(feed["patches"]).to(self.model.device))
            return {patch_encoder_spec(dim).outputs[0].name: out.float().cpu().numpy()}
        spec = aggregator_spec(dim)
        feats = torch.from_numpy(feed["patch_features"]).to(self.model.device)
        mask = torch.from_numpy(feed["patch_mask"]).to(self.model.device)
        logits, attention = self.model.aggregate(feats, mask, return_attention=True)
        return {spec.outputs[0].name: logits.float().cpu().numpy(),
                spec.outputs[1].name: attention.mean(dim=1).float().cpu().numpy()}


class OrtRunner(Runner):
    """onnxruntime session (CPU by default; ``threads`` None = all cores)."""

    def __init__(self, onnx_path: str | os.PathLike, providers: list[str] | None = None,
                 threads: int | None = None, max_shapes: dict[str, tuple[int, ...]] | None = None) -> None:
        self.path = Path(onnx_path)
        self.max_shapes = dict(max_shapes or {})  # largest shape per input, as a TensorRT profile declares it
        self.providers = providers or ["CPUExecutionProvider"]
        self.threads = threads
        self.name = f"ort:{self.path.name}"
        self.session: Any = None

    def __enter__(self) -> OrtRunner:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads or os.cpu_count() or 1
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(self.path), opts, providers=self.providers)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.session = None

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.session is None:
            raise RuntimeError(f"{self.name}: use it as a context manager (with OrtRunner(...) as r:)")
        for name, limit in self.max_shapes.items():
            shape = feed[name].shape
            if len(shape) != len(limit) or any(d > m for d, m in zip(shape, limit)):
                from spai.errors import ExportError

                raise ExportError(f"{self.name}: input {name} of shape {shape} exceeds the declared maximum {limit}")
        names = [o.name for o in self.session.get_outputs()]
        return dict(zip(names, self.session.run(names, feed)))
