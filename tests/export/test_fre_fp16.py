"""--fre-fp16: the FRE's Linear layers (MatMul/Gemm with a weight) in FP16; the spectral filter, cosine
similarities, moments, LayerNorm and Softmax stay FP32; parity-gated through spai.infer.parity like every route."""

from __future__ import annotations

import argparse

import pytest

from export.fp16 import FILTER_SCOPE, FP16_SCOPE, fp16_from_onnx, fre_linear_nodes
from spai.infer.parity import compare_routes, enforce
from spai.infer.runners import OrtRunner, Route

FP32_ONLY = ("LayerNormalization", "Softmax", "ReduceSum", "ReduceMean", "Sqrt", "Div")


def _elem_types(model) -> dict[str, int]:
    import onnx

    graph = onnx.shape_inference.infer_shapes(model).graph
    types = {v.name: v.type.tensor_type.elem_type for v in list(graph.value_info) + list(graph.output)}
    types.update({i.name: i.data_type for i in graph.initializer})
    return types


@pytest.fixture(scope="module")
def fre_fp16_graph(tiny_export, tmp_path_factory):
    import onnx

    _, art = tiny_export
    path = fp16_from_onnx(art.graphs.patch_encoder, tmp_path_factory.mktemp("fre") / "patch_encoder.fp16.onnx",
                          fre_fp16=True)
    return path, onnx.load(str(path)), onnx.load(str(art.graphs.patch_encoder))


def test_fre_linear_layers_are_fp16_and_the_statistics_fp32(fre_fp16_graph):
    from onnx import TensorProto

    _, mixed, fp32 = fre_fp16_graph
    linear = fre_linear_nodes(fp32.graph)
    assert len(linear) > 20  # projectors, gates, fusion MLPs, cross-attention projections of spai-tiny
    types = _elem_types(mixed)
    fre = [n for n in mixed.graph.node if n.name.startswith("/mfvit/") and not n.name.startswith((FP16_SCOPE,
                                                                                                  FILTER_SCOPE))]
    half = [n.name for n in fre if n.name in linear and types.get(n.output[0]) == TensorProto.FLOAT16]
    assert sorted(half) == sorted(linear)
    kept = [n for n in fre if n.op_type in FP32_ONLY]  # (a few Div nodes are INT64 shape arithmetic)
    assert kept and all(types.get(n.output[0]) in (TensorProto.FLOAT, TensorProto.INT64) for n in kept)
    assert sum(types.get(n.output[0]) == TensorProto.FLOAT for n in kept) > 20
    filt = [n for n in mixed.graph.node if n.name.startswith(FILTER_SCOPE) and n.op_type == "MatMul"]
    assert filt and all(types.get(n.output[0]) == TensorProto.FLOAT for n in filt)
    backbone = [n for n in mixed.graph.node if n.name.startswith(FP16_SCOPE) and n.op_type == "Softmax"]
    assert backbone and all(types.get(n.output[0]) == TensorProto.FLOAT16 for n in backbone)  # fusable attention


def test_fre_fp16_passes_the_fp16_gates(tiny_export, fre_fp16_graph, check_images):
    model, art = tiny_export
    path, _, _ = fre_fp16_graph
    with OrtRunner(path) as enc, OrtRunner(art.graphs.aggregator) as agg:
        report = compare_routes(model, [Route("ort-fre-fp16", "fp16", enc, agg)], image_paths=check_images[:4],
                                  n_random=16)
    enforce(report)
    assert report.backends["ort-fre-fp16"]["images"]["decision_flips"] == 0


def test_cli_options_reach_the_builder():
    from export.cli import add_arguments, build_options

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["spai-tiny", "--fre-fp16", "--fp32-softmax", "--version-compatible", "--tf32",
                              "--builder-optimization-level", "5", "--detailed-profiling", "--workspace", "512"])
    opts = build_options(args)
    assert args.fre_fp16 and (opts.version_compatible, opts.tf32, opts.optimization_level) == (True, True, 5)
    assert args.fp32_softmax and not parser.parse_args(["spai-tiny"]).fp32_softmax  # attention FP16 by default
    assert (opts.detailed_profiling, opts.workspace_mb) == (True, 512)
    assert build_options(parser.parse_args(["spai-tiny"])).tf32 is False  # FP32 layers run in FP32 by default
