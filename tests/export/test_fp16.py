"""``patch_encoder.fp16.onnx`` keeps TensorRT's UINT8 rule on every FP16 route: the uint8 ``patches`` input is
read by Cast nodes only and no node makes a UINT8 tensor that is not a graph output (onnx-tensorrt's
ModelImporter refuses "UINT8 types for intermediate tensors"; ONNX Runtime accepts them, so parity cannot tell)."""

from __future__ import annotations

import onnx
import pytest


def _uint8_misuse(path) -> list[str]:
    model = onnx.load(str(path))
    graph = onnx.shape_inference.infer_shapes(model).graph
    uint8 = {v.name for v in list(graph.value_info) + list(graph.input) + list(graph.output)
             if v.type.tensor_type.elem_type == onnx.TensorProto.UINT8}
    outputs = {o.name for o in graph.output}
    inputs = {i.name for i in graph.input if i.name in uint8}
    problems = [f"{n.name} ({n.op_type}) reads uint8 input {i}" for n in graph.node for i in n.input
                if i in inputs and n.op_type != "Cast"]
    problems += [f"{n.name} ({n.op_type}) makes uint8 intermediate {o}" for n in graph.node for o in n.output
                 if o in uint8 and o not in outputs and n.op_type != "Constant"]
    return problems


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
