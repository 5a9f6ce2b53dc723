"""ONNX Runtime behind Triton's Python backend (the ``python-ort`` variant; the only kind the Triton bundled in
nvidia-pytriton can load) and in-process (tests, benchmarks): batch requests of equal shape into one run.

``serving/models/ort_model.py`` is the thin pb_utils adapter around :class:`OrtRunner`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from spai.errors import ServingError

Inputs = dict[str, np.ndarray]


def make_session(onnx_path: str | os.PathLike, threads: int = 0):
    """An onnxruntime InferenceSession on the best available provider (CUDA if present, else CPU)."""
    import onnxruntime as ort

    path = Path(onnx_path)
    if not path.is_file():
        raise ServingError(f"{path}: ONNX file not found; build the repository with serving/build_repository.py "
                           "from an export directory that holds it.")
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    wanted = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    providers = [p for p in wanted if p in ort.get_available_providers()]
    return ort.InferenceSession(str(path), sess_options=opts, providers=providers)


class OrtRunner:
    """Runs one ONNX graph; ``run_many`` concatenates requests whose non-batch shapes agree."""

    def __init__(self, session, output_names: Sequence[str] | None = None) -> None:
        self.session = session
        available = [o.name for o in session.get_outputs()]
        self.output_names = [n for n in (output_names or available) if n in available]

    def run(self, inputs: Inputs) -> dict[str, np.ndarray]:
        """One batch -> outputs by name."""
        values = self.session.run(self.output_names, inputs)
        return dict(zip(self.output_names, values))

    def run_many(self, requests: Sequence[Inputs]) -> list[dict[str, np.ndarray]]:
        """Several requests (each batch-first) -> their outputs, batching requests of equal shapes."""
        results: list[dict[str, np.ndarray] | None] = [None] * len(requests)
        for indices in group_by_shape(requests):
            batch = {k: np.concatenate([requests[i][k] for i in indices]) for k in requests[indices[0]]}
            outputs = self.run(batch)
            sizes = [len(next(iter(requests[i].values()))) for i in indices]
            for i, part in zip(indices, split_outputs(outputs, sizes)):
                results[i] = part
        return results  # type: ignore[return-value]


def group_by_shape(requests: Sequence[Inputs]) -> list[list[int]]:
    """Indices of requests grouped by their inputs' non-batch shapes and dtypes, in first-seen order."""
    groups: dict[tuple, list[int]] = {}
    for i, req in enumerate(requests):
        key = tuple(sorted((k, v.shape[1:], v.dtype.str) for k, v in req.items()))
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def split_outputs(outputs: dict[str, np.ndarray], sizes: Sequence[int]) -> list[dict[str, np.ndarray]]:
    """Split batch-first outputs back into per-request pieces of ``sizes`` rows."""
    bounds = np.cumsum(sizes)[:-1]
    pieces = {k: np.split(v, bounds) for k, v in outputs.items()}
    return [{k: pieces[k][j] for k in outputs} for j in range(len(sizes))]


class InProcessScorer:
    """The ``spai`` pipeline with both graphs in this process (reference for serving overhead)."""

    def __init__(self, artifacts: str | os.PathLike, threads: int = 0) -> None:
        art = Path(artifacts)
        self.encoder = OrtRunner(make_session(art / "patch_encoder.onnx", threads), ["patch_features"])
        self.aggregator = OrtRunner(make_session(art / "aggregator.onnx", threads), ["logits", "attention"])

    def encode(self, patches: np.ndarray) -> np.ndarray:
        return self.encoder.run({"patches": patches})["patch_features"]

    def aggregate(self, features: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        out = self.aggregator.run({"patch_features": features, "patch_mask": mask})
        return out["logits"], out.get("attention")
