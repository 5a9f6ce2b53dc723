"""PyTorch -> ONNX: ``patch_encoder.onnx`` and ``aggregator.onnx`` with the names and dynamic axes of
:mod:`spai.model.specs`.

Exporter choice: the TorchScript exporter (``torch.onnx.export(..., dynamo=False)``). Our spectral filter is
already plain MatMuls, so the dynamo exporter's one advantage (FFT -> ``DFT``) is moot, and in our trials the
dynamo exporter specialised the patch batch to the example size (2) instead of keeping it dynamic. The
TorchScript exporter keeps every ``dynamic_axes`` entry symbolic and matches eager PyTorch to ~1e-6.
Only its "legacy exporter" deprecation warning is silenced, and only around the call.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spai.errors import CheckpointError, ExportError
from spai.files import atomic_path
from spai.lazy import lazy_import
from spai.model.calibration import UNCALIBRATED, write_export_calibration
from spai.model.specs import (
    AGGREGATOR_FILE,
    ENCODER_FILES,
    OPSET,
    PATCHES_INPUT,
    ModelSpec,
    aggregator_spec,
    patch_encoder_spec,
)

onnx = lazy_import("onnx")

FORBIDDEN_OPS = frozenset({"DFT", "STFT", "Rfft", "Irfft"})  # no FFT op may reach TensorRT < 11.2
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OnnxExport:
    """Paths and the feature dimension of one export."""

    patch_encoder: Path
    aggregator: Path
    feature_dim: int

    @property
    def directory(self) -> Path:
        """The export directory (what a model repository is built from)."""
        return self.patch_encoder.parent


class PatchEncoderGraph(nn.Module):
    """``patches`` (uint8) -> ``patch_features``: the whole trained encoder (the x / 255 scaling, spectral split,
    backbone, FRE)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return self.model.encode_patches(patches)


class AggregatorGraph(nn.Module):
    """(``patch_features``, ``patch_mask``) -> (``logits``, ``attention`` averaged over heads)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, attention = self.model.aggregate(features, mask, return_attention=True)
        return logits, attention.mean(dim=1)


def model_from_source(source: str | os.PathLike) -> tuple[nn.Module, str]:
    """A checkpoint path (any format :func:`spai.create_model` reads) or a named config (random weights).

    Returns the model in eval mode and a one-line description of where its weights come from.
    """
    import spai

    path = Path(source)
    if path.is_file() or path.suffix in {".pth", ".pt", ".ckpt", ".bin", ".safetensors"} or os.sep in str(source):
        if not path.is_file():
            raise CheckpointError(f"Checkpoint {path} does not exist; pass a checkpoint file or a model name "
                                  f"({', '.join(spai.list_models())}).")
        return spai.create_model(checkpoint=path), f"checkpoint {path}"
    if str(source) in spai.list_models():
        return spai.create_model(str(source)), f"named config {source} with RANDOM weights (not a trained model)"
    raise CheckpointError(f"{source!r} is neither a checkpoint file nor a model name; named models: "
                          f"{', '.join(spai.list_models())}.")


def ensure_writable_dir(out_dir: str | os.PathLike) -> Path:
    """Create ``out_dir`` if needed and prove a file can be written there (ExportError otherwise)."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".probe-"):
            pass
    except OSError as e:
        raise ExportError(f"Output directory {out} is not writable ({e.strerror or e}); choose another with -o.") \
            from e
    return out


@contextlib.contextmanager
def _quiet_legacy_exporter() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*legacy.*TorchScript.*")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        yield


def export_graph(module: nn.Module, args: tuple[torch.Tensor, ...], spec: ModelSpec, path: Path,
                 opset: int | None = None) -> Path:
    """Export ``module`` (put in eval mode) with ``spec``'s names/dynamic axes; checked, then renamed onto
    ``path``."""
    module.eval()
    with atomic_path(path) as tmp, _quiet_legacy_exporter(), torch.no_grad():
        try:
            torch.onnx.export(module, args, str(tmp), dynamo=False, opset_version=opset or OPSET,
                              input_names=[t.name for t in spec.inputs],
                              output_names=[t.name for t in spec.outputs],
                              dynamic_axes=spec.dynamic_axes, do_constant_folding=True)
            onnx.checker.check_model(str(tmp), full_check=True)
        except (RuntimeError, onnx.checker.ValidationError) as e:
            raise ExportError(f"ONNX export of {spec.name} failed: {e}") from e
        check_graph(onnx.load(str(tmp), load_external_data=False), spec.name)
    return path


def check_graph(model: Any, name: str) -> None:
    """Refuse graphs with FFT ops or complex tensors (TensorRT < 11.2 cannot parse them)."""
    bad = sorted({n.op_type for n in model.graph.node} & FORBIDDEN_OPS)
    complex_types = {onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128}
    values = list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)
    if bad or any(v.type.tensor_type.elem_type in complex_types for v in values):
        raise ExportError(f"{name}: exported graph holds FFT ops {bad} or complex tensors; the spectral filter "
                          "must export as MatMuls (spai.model.nn.spectral.SpectralFilter).")


def example_inputs(feature_dim: int, batch: int = 2, patches: int = 3) -> dict[str, tuple[torch.Tensor, ...]]:
    """Tracing inputs; sizes > 1 so no dimension is mistaken for a broadcast constant."""
    mask = torch.ones(batch, patches, dtype=torch.bool)
    mask[0, -1] = False
    pixels = torch.randint(0, 256, (batch, *PATCHES_INPUT.shape), dtype=getattr(torch, PATCHES_INPUT.dtype))
    return {"patch_encoder": (pixels,),
            "aggregator": (torch.randn(batch, patches, feature_dim), mask)}


def onnx_from_torch(model: nn.Module, out_dir: str | os.PathLike, *, opset: int | None = None) -> OnnxExport:
    """Write ``patch_encoder.onnx`` and ``aggregator.onnx`` for ``model`` (a :class:`spai.SPAIModel`) to
    ``out_dir``, and a calibrated model's ``calibration.json`` beside them (the graphs output raw logits; the
    calibration is applied by :mod:`spai.infer.scorer` and carried into the Triton ``spai`` model's parameters).
    The model's train/eval mode is restored afterwards."""
    out = ensure_writable_dir(out_dir)
    dim = int(model.feature_dim)
    inputs = example_inputs(dim)
    was_training = model.training
    try:
        log.info("exporting patch encoder (D=%d) to ONNX opset %d ...", dim, opset or OPSET)
        enc = export_graph(PatchEncoderGraph(model), inputs["patch_encoder"], patch_encoder_spec(dim),
                           out / ENCODER_FILES["fp32"], opset)
        log.info("exporting aggregator to ONNX ...")
        agg = export_graph(AggregatorGraph(model), inputs["aggregator"], aggregator_spec(dim),
                           out / AGGREGATOR_FILE, opset)
    finally:
        model.train(was_training)
    calibration = write_export_calibration(getattr(model, "calibration", UNCALIBRATED), out)
    if calibration:
        log.info("wrote the model's calibration (%s, default operating point %s) to %s", model.calibration.method,
                 model.calibration.default, calibration)
    return OnnxExport(enc, agg, dim)
