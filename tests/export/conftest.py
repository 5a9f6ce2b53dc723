"""Export fixtures: one spai-tiny export (ONNX fp32 + fp16) shared by the whole session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory: pytest.TempPathFactory):
    """(model, OnnxArtifacts) for spai-tiny with seeded random weights."""
    import spai
    from export.fp16 import patch_encoder_fp16
    from export.onnx import onnx_from_torch
    from export.pipeline import OnnxArtifacts

    torch.manual_seed(0)
    model = spai.create_model("spai-tiny")
    out = tmp_path_factory.mktemp("tiny_export")
    graphs = onnx_from_torch(model, out)
    return model, OnnxArtifacts(model, "spai-tiny (random)", graphs, patch_encoder_fp16(model, graphs.patch_encoder))
