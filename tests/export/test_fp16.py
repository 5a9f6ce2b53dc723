"""``patch_encoder.fp16.onnx`` keeps TensorRT's UINT8 rule on every FP16 route: the uint8 ``patches`` input is
read by Cast nodes only and no node makes a UINT8 tensor that is not a graph output (onnx-tensorrt's
ModelImporter refuses "UINT8 types for intermediate tensors"; ONNX Runtime accepts them, so parity cannot tell)."""

from __future__ import annotations

import onnx
import pytest

from export.trt_rules import check_graph


def _uint8_misuse(path) -> list[str]:
    """The ``uint8`` rule's violations (export/trt_rules.py: the one place this rule is written)."""
    return [str(v) for v in check_graph(path).violations if v.rule == "uint8"]


@pytest.mark.parametrize("route", ["convert", "fre_fp16", "torch"])
def test_fp16_encoder_reads_uint8_patches_with_cast_only(route, tiny_export, tiny_fre_fp16, tiny_torch_fp16):
    _, art = tiny_export
    path = {"convert": art.patch_encoder_fp16, "fre_fp16": tiny_fre_fp16, "torch": tiny_torch_fp16}[route]
    graph = onnx.load(str(path)).graph
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8  # the serving contract is unchanged
    assert _uint8_misuse(path) == []


def test_fp32_encoder_reads_uint8_patches_with_cast_only(tiny_export):
    _, art = tiny_export
    assert _uint8_misuse(art.graphs.patch_encoder) == []


# Attention: FP16 end to end by default (MatMul -> Softmax -> MatMul, the form TensorRT fuses), FP32 Softmax islands
# with fp32_softmax (``spai export --fp32-softmax``); LayerNorm, the spectral filter and the FRE stay FP32 either way.
TINY_BLOCKS = 4  # spai-tiny's ViT blocks


def _types(path) -> tuple[onnx.ModelProto, dict[str, int]]:
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    types = {v.name: v.type.tensor_type.elem_type for v in list(model.graph.value_info) + list(model.graph.output)}
    return model, types


@pytest.fixture(scope="module")
def tiny_fp32_softmax(tiny_export, tmp_path_factory) -> dict[str, object]:
    """route -> ``patch_encoder.fp16.onnx`` of spai-tiny built with ``fp32_softmax=True``."""
    from export.fp16 import fp16_from_onnx, fp16_from_torch

    model, art = tiny_export
    out = tmp_path_factory.mktemp("fp32_softmax")
    return {"convert": fp16_from_onnx(art.graphs.patch_encoder, out / "convert.fp16.onnx", fp32_softmax=True),
            "torch": fp16_from_torch(model, out / "torch.fp16.onnx", fp32_softmax=True)}


@pytest.mark.parametrize("route", ["convert", "fre_fp16", "torch"])
def test_attention_is_fp16_and_fusable_by_default(route, tiny_export, tiny_fre_fp16, tiny_torch_fp16):
    from export.fp16 import FILTER_SCOPE

    _, art = tiny_export
    path = {"convert": art.patch_encoder_fp16, "fre_fp16": tiny_fre_fp16, "torch": tiny_torch_fp16}[route]
    attention = check_graph(path).attention
    assert len(attention.blocks) == TINY_BLOCKS and attention.fusable == TINY_BLOCKS
    assert all(b.casts == 0 and b.scale == "q/k" and set(b.dtypes) == {"FLOAT16"} for b in attention.blocks)
    model, types = _types(path)
    norms = [n for n in model.graph.node if n.op_type == "LayerNormalization"]
    assert len(norms) > 2 * TINY_BLOCKS and all(types[n.output[0]] == onnx.TensorProto.FLOAT for n in norms)
    filt = [n for n in model.graph.node if n.name.startswith(FILTER_SCOPE) and n.op_type == "MatMul"]
    assert route == "torch" or (filt and all(types[n.output[0]] == onnx.TensorProto.FLOAT for n in filt))


@pytest.mark.parametrize("route", ["convert", "torch"])
def test_fp32_softmax_restores_the_islands(route, tiny_fp32_softmax):
    path = tiny_fp32_softmax[route]
    verdict = check_graph(path)
    assert verdict.passed and _uint8_misuse(path) == []
    assert len(verdict.attention.blocks) == TINY_BLOCKS and verdict.attention.fusable == 0
    assert all(b.casts == 2 and b.dtypes[1:-2] == ("FLOAT", "FLOAT") for b in verdict.attention.blocks)


def test_both_attention_forms_pass_the_fp16_gates(tiny_export, tiny_fp32_softmax, check_images):
    from spai.infer.parity import compare_routes, enforce
    from spai.infer.runners import OrtRunner, Route

    model, art = tiny_export
    with (OrtRunner(art.patch_encoder_fp16) as fp16, OrtRunner(tiny_fp32_softmax["convert"]) as island,
          OrtRunner(art.graphs.aggregator) as agg):
        routes = [Route("ort-fp16", "fp16", fp16, agg), Route("ort-fp16-fp32-softmax", "fp16", island, agg)]
        report = compare_routes(model, routes, image_paths=check_images[:4], n_random=32)
    enforce(report)
    for name, entry in report.backends.items():
        print(name, {k: (v["max_abs_dprob"], v["decision_flips"]) for k, v in entry.items() if isinstance(v, dict)
                     and "max_abs_dprob" in v})
        assert entry["images"]["decision_flips"] == 0


def test_export_records_the_attention_form(tiny_export, tiny_fp32_softmax, tmp_path):
    import dataclasses
    import json

    from export.pipeline import engine_profiles, parity_from_onnx

    _, art = tiny_export
    island = dataclasses.replace(art, patch_encoder_fp16=tiny_fp32_softmax["convert"], fp32_softmax=True,
                                 trt_verdicts={})
    parity_from_onnx(island, tmp_path, engine_profiles(art.graphs.feature_dim), n_random=4)
    report = json.loads((tmp_path / "export_report.json").read_text())["tensorrt_compatibility"]
    assert report["fp16_attention"] == {"softmax": "fp32", "fp32_softmax": True}
    assert report["graphs"][1]["attention"]["fusable"] == 0 and any("--fp32-softmax" in n for n in report["notes"])
    assert "not fusable by TensorRT: 2 Cast(s)" in (tmp_path / "export_report.md").read_text()


def test_cli_threads_fp32_softmax_to_the_export(tmp_path, monkeypatch):
    import argparse

    from export import cli, pipeline

    seen = {}

    def fake_onnx(source, out, **kwargs):
        seen.update(kwargs)
        raise SystemExit(0)

    monkeypatch.setattr(pipeline, "onnx_from_checkpoint", fake_onnx)
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    for argv, expected in ((["spai-tiny", "--fp32-softmax"], True), (["spai-tiny"], False)):
        with pytest.raises(SystemExit):
            cli.run(parser.parse_args([*argv, "-o", str(tmp_path)]))
        assert seen["fp32_softmax"] is expected
