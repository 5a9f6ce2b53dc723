"""Export a model's two graphs for serving (the aggregator includes the ``attention`` output for heatmaps)."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from export.onnx import onnx_from_torch


def export_for_serving(model: nn.Module, out_dir: str | Path) -> Path:
    """Write patch_encoder.onnx and aggregator.onnx into ``out_dir`` (see :func:`export.onnx.onnx_from_torch`)."""
    return onnx_from_torch(model, out_dir).patch_encoder.parent
