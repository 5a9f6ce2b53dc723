"""Export fixtures: one spai-tiny export (ONNX fp32 + fp16) shared by the whole session, its other FP16 routes
(``--fre-fp16``, ``--fp16-route torch``) and, for the slow TensorRT-compatibility tests, one export per b16 config."""

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


@pytest.fixture(scope="session")
def tiny_fre_fp16(tiny_export, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``patch_encoder.fp16.onnx`` of the tiny export with the FRE's Linear layers in FP16 (``--fre-fp16``)."""
    from export.fp16 import fp16_from_onnx

    _, art = tiny_export
    return fp16_from_onnx(art.graphs.patch_encoder, tmp_path_factory.mktemp("fre") / "patch_encoder.fp16.onnx",
                          fre_fp16=True)


@pytest.fixture(scope="session")
def tiny_torch_fp16(tiny_export, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``patch_encoder.fp16.onnx`` of the tiny model by the ``torch`` route (``--fp16-route torch``)."""
    from export.fp16 import fp16_from_torch

    model, _ = tiny_export
    return fp16_from_torch(model, tmp_path_factory.mktemp("torch_fp16") / "patch_encoder.fp16.onnx")


def _export_config(name: str, out: Path) -> dict[str, Path]:
    """Every graph ``spai export`` writes for config ``name`` (seeded random weights) that TensorRT could be
    handed: the fp32 and default fp16 encoders, the ``--fre-fp16`` encoder and the aggregator."""
    import spai
    from export.fp16 import fp16_from_onnx, patch_encoder_fp16
    from export.onnx import onnx_from_torch

    torch.manual_seed(0)
    model = spai.create_model(name)
    graphs = onnx_from_torch(model, out)
    return {"fp32": graphs.patch_encoder, "fp16": patch_encoder_fp16(model, graphs.patch_encoder),
            "fre_fp16": fp16_from_onnx(graphs.patch_encoder, out / "fre" / "patch_encoder.fp16.onnx", fre_fp16=True),
            "aggregator": graphs.aggregator}


@pytest.fixture(scope="session")
def b16_exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Path]]:
    """config -> graph kind -> path, for spai-b16 and spai-fusion-b16 (exported once per session: slow)."""
    return {name: _export_config(name, tmp_path_factory.mktemp(name)) for name in ("spai-b16", "spai-fusion-b16")}
