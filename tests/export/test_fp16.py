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
