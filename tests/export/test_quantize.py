"""The int8 CPU encoder: what is quantised and what stays fp32, the uint8 input contract, and the comparator's
gates for the reduced-precision CPU routes (random patches, images of several sizes, a trained spai-tiny)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import onnx
import pytest

from export.compare import load_images
from export.quantize import check_int8_graph, patch_encoder_int8, precision_table_onnx
from spai.errors import ExportError
from spai.infer.parity import Gates, _gate, compare_routes
from spai.infer.routes import runners_for

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def int8_export(tiny_export):
    model, art = tiny_export
    return model, art, patch_encoder_int8(art.graphs.patch_encoder)


def test_int8_graph_quantises_gemms_and_keeps_the_filter_norms_and_statistics_fp32(int8_export) -> None:
    _, _, path = int8_export
    graph = onnx.load(str(path)).graph
    assert graph.input[0].name == "patches" and graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    integer = [n for n in graph.node if n.op_type == "MatMulInteger"]
    assert integer and not any(n.name.startswith("/mfvit/filter/") for n in integer)
    assert sum(n.op_type == "MatMul" and n.name.startswith("/mfvit/filter/") for n in graph.node) == 4
    table = precision_table_onnx(path)
    assert "vit/mlp/c_fc" in table["int8_gemms"] and table["fp32_gemms"]["filter (weights)"] == 4
    assert table["fp32_gemms"]["vit (two activations)"] == 2 * 4  # QK^T and AV of the 4 blocks
    assert table["fp32_ops"]["LayerNormalization"] > 0 and table["fp32_ops"]["Softmax"] > 0


def test_check_int8_graph_refuses_an_unquantised_graph(tiny_export) -> None:
    with pytest.raises(ExportError, match="no MatMul was quantised"):
        check_int8_graph(tiny_export[1].graphs.patch_encoder)  # the fp32 encoder: uint8 patches, no int8 GEMM
    with pytest.raises(ExportError, match="breaks the 'patches' uint8 contract"):
        check_int8_graph(tiny_export[1].graphs.aggregator)


def test_gates_cover_every_precision_by_name() -> None:
    stats = {"finite": True, "max_abs_dprob": 5e-3, "decision_flips": 1, "operating_point": "p0.5"}
    assert _gate("x", "int8", stats, Gates(), False) == []
    assert _gate("x", "bf16", stats, Gates(), True) == ["x: 1 decision flip(s) at operating point p0.5 (allowed 0)"]
    assert _gate("x", "int8", stats, replace(Gates(), int8_max_dprob=1e-3), False)[0].startswith("x: max |Δp|")
    with pytest.raises(ValueError, match="no parity gates"):
        _gate("x", "int4", stats, Gates(), False)


def test_reduced_precision_routes_pass_the_gates_on_patches_and_images(int8_export, generated_images) -> None:
    model, art, path = int8_export
    routes = [runners_for("torch", "bf16", model=model).__enter__(),
              runners_for("ort", "int8", onnx_dir=path.parent).__enter__()]
    report = compare_routes(model, routes, image_paths=generated_images, n_random=32)
    assert report.passed, report.failures
    assert set(report.backends) == {"torch-bf16", "ort-int8"}
    assert all(e["images"]["n"] == len(generated_images) for e in report.backends.values())


@pytest.mark.slow
def test_reduced_precision_routes_pass_the_gates_on_a_trained_spai_tiny(tmp_path) -> None:
    """Trained weights put logits near the threshold: decisions and AUC must survive bf16 and int8."""
    import spai
    from benchmarks.trained import labelled_test_dir
    from export.onnx import onnx_from_torch
    from spai.data.proxy import make_proxy_dataset
    from spai.model.config import get_config
    from spai.train.trainer import TrainOptions, train

    data = make_proxy_dataset(tmp_path / "proxy", n=12, seed=3)
    cfg = get_config("spai-tiny", [("DATA.BATCH_SIZE", 4), ("TRAIN.EPOCHS", 3), ("TRAIN.WARMUP_EPOCHS", 1),
                                   ("TRAIN.FUSION_ONLY_EPOCHS", 1), ("DATA.NUM_WORKERS", 0)])
    train(TrainOptions(cfg=cfg, data_csv=data, output=tmp_path / "run", progress=False, tensorboard=False))
    model = spai.create_model(checkpoint=tmp_path / "run" / "best.pth")
    graphs = onnx_from_torch(model, tmp_path / "onnx")
    patch_encoder_int8(graphs.patch_encoder)
    paths, labels = load_images(labelled_test_dir(data, tmp_path / "test"))
    routes = [runners_for("torch", "bf16", model=model).__enter__(),
              runners_for("ort", "int8", onnx_dir=graphs.directory).__enter__()]
    report = compare_routes(model, routes, image_paths=paths, labels=labels, n_random=16)
    assert labels is not None and len(set(labels)) == 2
    assert report.passed, report.failures
    assert all(abs(e["images"]["auc_delta"]) <= 0.05 for e in report.backends.values())


@pytest.mark.slow
def test_export_cli_writes_and_gates_the_reduced_precision_routes(tmp_path) -> None:
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "spai_cli", "export", "spai-tiny", "-o", str(out), "--onnx-only",
                        "--check-patches", "16", "--precision", "int8", "--precision", "bf16"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert (out / "patch_encoder.int8.onnx").is_file()
    report = json.loads((out / "export_report.json").read_text())
    assert report["passed"] and {"ort-int8", "torch-bf16"} <= set(report["backends"])
    assert report["backends"]["ort-int8"]["precision"] == "int8"
    assert {"ort-int8", "torch-bf16"} <= set(report["precision_layers"])
    assert "ort-int8 (int8)" in (out / "export_report.md").read_text()
