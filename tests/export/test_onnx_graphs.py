"""Structure of the exported graphs: names, opset, LayerNormalization, no FFT/complex, TensorRT-parsable ops."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from export.trt_rules import support_matrix
from spai.model.specs import OPSET, aggregator_spec, patch_encoder_spec


def _graphs(art):
    return {"fp32": art.graphs.patch_encoder, "fp16": art.patch_encoder_fp16, "aggregator": art.graphs.aggregator}


def test_onnx_graphs_use_spec_names_and_dynamic_axes(tiny_export):
    _, art = tiny_export
    dim = art.graphs.feature_dim
    for path, spec in ((art.graphs.patch_encoder, patch_encoder_spec(dim)),
                       (art.patch_encoder_fp16, patch_encoder_spec(dim)),
                       (art.graphs.aggregator, aggregator_spec(dim))):
        g = onnx.load(str(path)).graph
        assert [i.name for i in g.input] == [t.name for t in spec.inputs]
        assert [o.name for o in g.output] == [t.name for t in spec.outputs]
        for vi, t in zip(list(g.input) + list(g.output), spec.inputs + spec.outputs):
            assert vi.type.tensor_type.elem_type == onnx.helper.np_dtype_to_tensor_dtype(t.np_dtype), vi.name
            dims = vi.type.tensor_type.shape.dim
            for axis in spec.dynamic_axes[vi.name]:
                assert dims[axis].dim_param, f"{path.name}:{vi.name} axis {axis} is not dynamic"


def test_onnx_graphs_have_opset_layernorm_and_no_fft(tiny_export):
    _, art = tiny_export
    for kind, path in _graphs(art).items():
        model = onnx.load(str(path))
        assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= max(OPSET, 17)
        ops = {n.op_type for n in model.graph.node}
        assert "LayerNormalization" in ops, kind
        assert not ops & {"DFT", "STFT", "Rfft", "Irfft"}, kind
        inferred = onnx.shape_inference.infer_shapes(model)
        complex_types = {onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128}
        assert not any(v.type.tensor_type.elem_type in complex_types for v in inferred.graph.value_info)


def test_onnx_ops_all_in_tensorrt_parser_list(tiny_export):
    _, art = tiny_export
    supported = support_matrix("10").supported_ops  # the ops half of the rules: tests/export/test_trt_rules.py
    assert "DFT" not in supported and "MatMul" in supported
    for kind, path in _graphs(art).items():
        ops = {n.op_type for n in onnx.load(str(path)).graph.node}
        assert ops <= supported, f"{kind}: not parsable by TensorRT: {sorted(ops - supported)}"


def test_fp16_graph_computes_backbone_in_fp16_with_fp32_islands(tiny_export):
    _, art = tiny_export
    g = onnx.load(str(art.patch_encoder_fp16)).graph
    fp16_inits = [i for i in g.initializer if i.data_type == onnx.TensorProto.FLOAT16]
    assert fp16_inits, "no FP16 weights: the backbone was not converted"
    inferred = {v.name: v.type.tensor_type.elem_type
                for v in onnx.shape_inference.infer_shapes(onnx.load(str(art.patch_encoder_fp16))).graph.value_info}
    backbone_softmax = 0
    for node in g.node:
        out = inferred.get(node.output[0])
        if node.op_type == "Softmax" and node.name.startswith("/mfvit/vit/"):  # attention: FP16, fusable (issue 33)
            assert out == onnx.TensorProto.FLOAT16, f"{node.name} is not FP16: TensorRT cannot fuse its attention"
            backbone_softmax += 1
        elif node.op_type in ("LayerNormalization", "Softmax") or node.name.startswith("/mfvit/filter/"):
            assert out != onnx.TensorProto.FLOAT16, f"{node.name} ({node.op_type}) runs in FP16"
    assert backbone_softmax == 4  # spai-tiny's four blocks


@pytest.mark.parametrize("batch", [1, 5])
def test_ort_patch_encoder_keeps_batch_dynamic(tiny_export, batch):
    from spai.infer.runners import OrtRunner

    _, art = tiny_export
    with OrtRunner(art.graphs.patch_encoder, limits={"patches": (batch, 3, 224, 224)}) as r:
        out = r.infer({"patches": np.random.default_rng(0).integers(0, 256, (batch, 3, 224, 224), dtype=np.uint8)})
    assert out["patch_features"].shape == (batch, art.graphs.feature_dim)


def test_export_restores_eval_mode(tiny_export):
    model, _ = tiny_export
    assert not model.training and not any(m.training for m in model.modules())
