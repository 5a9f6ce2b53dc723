"""TensorRT's ONNX parser rules on CPU (``export/trt_rules.py``): every graph every model config exports passes;
one planted violation per rule fails with that rule; ``spai export`` refuses (exit 3) before TensorRT and records
the verdicts in its report."""

from __future__ import annotations

import json
import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from export.trt_rules import RULES, check_graph, enforce, support_matrix
from spai.errors import AccuracyError
from spai_cli.console import report_errors

F, U8, I32, I64, B, F64 = (TensorProto.FLOAT, TensorProto.UINT8, TensorProto.INT32, TensorProto.INT64,
                           TensorProto.BOOL, TensorProto.DOUBLE)
H, BF16 = TensorProto.FLOAT16, TensorProto.BFLOAT16
# spai-tiny's graphs: (attention blocks, fusable): 4 ViT blocks in the backbone, 1 attention pooling in the aggregator
TINY_ATTENTION = {"fp32": (4, 0), "fp16": (4, 4), "fre_fp16": (4, 4), "torch_fp16": (4, 4), "aggregator": (1, 0)}


def _model(nodes, inputs, outputs, initializers=(), opset=18):
    graph = helper.make_graph(nodes, "planted", [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
                              [helper.make_tensor_value_info(n, t, s) for n, t, s in outputs], list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model)
    return model


def _rules(verdict, node):
    return {v.rule for v in verdict.violations if v.node == node}


def _assert_passes(path):
    verdict = check_graph(path)
    assert verdict.passed, "\n".join(map(str, verdict.violations))
    assert verdict.rules == RULES and verdict.nodes > 0 and verdict.opset == 18 and verdict.unknown_types == 0
    return verdict


@pytest.mark.parametrize("graph", ["fp32", "fp16", "fre_fp16", "torch_fp16", "aggregator"])
def test_every_spai_tiny_graph_passes(graph, tiny_export, tiny_fre_fp16, tiny_torch_fp16):
    _, art = tiny_export
    path = {"fp32": art.graphs.patch_encoder, "fp16": art.patch_encoder_fp16, "fre_fp16": tiny_fre_fp16,
            "torch_fp16": tiny_torch_fp16, "aggregator": art.graphs.aggregator}[graph]
    verdict = _assert_passes(path)
    assert "LayerNormalization" in verdict.ops and "MatMul" in verdict.ops
    assert (len(verdict.attention.blocks), verdict.attention.fusable) == TINY_ATTENTION[graph]


@pytest.mark.slow
def test_every_b16_graph_passes(b16_exports):
    for config, graphs in b16_exports.items():
        for kind, path in graphs.items():
            start = time.perf_counter()
            verdict = _assert_passes(path)
            print(f"{config} {kind}: {verdict.summary()} ({time.perf_counter() - start:.1f} s)")
            blocks, fusable = len(verdict.attention.blocks), verdict.attention.fusable
            assert (blocks, fusable) == ((12, 12) if "fp16" in kind else (12, 0) if kind == "fp32" else (1, 0))


def test_uint8_input_read_by_identity_fails():
    # what export/fp16.py used to emit: an Identity after the uint8 patches input
    model = _model([helper.make_node("Identity", ["patches"], ["p"], name="io_identity"),
                    helper.make_node("Cast", ["p"], ["y"], name="to_float", to=F)],
                   [("patches", U8, [1, 3])], [("y", F, [1, 3])])
    verdict = check_graph(model)
    assert _rules(verdict, "io_identity") == {"uint8"} and not _rules(verdict, "to_float")
    assert len(verdict.violations) == 2  # reads the uint8 input, and makes a uint8 intermediate
    assert all("Cast" in v.message for v in verdict.violations)


def test_uint8_intermediate_and_constant_fail_but_uint8_output_and_weights_pass():
    made = _model([helper.make_node("Cast", ["x"], ["u"], name="to_u8", to=U8),
                   helper.make_node("Cast", ["u"], ["y"], name="back", to=F),
                   helper.make_node("Constant", [], ["c"], name="u8_const",
                                    value=numpy_helper.from_array(np.zeros(3, np.uint8))),
                   helper.make_node("Cast", ["c"], ["z"], name="c_float", to=F),
                   helper.make_node("Cast", ["x"], ["out_u8"], name="to_output", to=U8),
                   helper.make_node("Gather", ["x", "idx"], ["g"], name="gather_u8_weights", axis=1)],
                  [("x", F, [1, 3])], [("y", F, [1, 3]), ("z", F, [3]), ("out_u8", U8, [1, 3]), ("g", F, [1, 2])],
                  [numpy_helper.from_array(np.array([0, 2], np.uint8), "idx")])
    verdict = check_graph(made)
    assert _rules(verdict, "to_u8") == {"uint8"}
    assert _rules(verdict, "u8_const") == {"uint8"}  # refused by 10.x parsers before the Constant exemption
    assert not _rules(verdict, "to_output") and not _rules(verdict, "gather_u8_weights")  # UINT8 weights -> INT32


def test_unsupported_op_and_foreign_domain_fail():
    model = _model([helper.make_node("DFT", ["x"], ["y"], name="fft", onesided=0)],
                   [("x", F, [1, 8, 1])], [("y", F, [1, 8, 2])])
    verdict = check_graph(model)
    assert _rules(verdict, "fft") == {"op-support"} and "support matrix" in verdict.violations[0].message
    custom = helper.make_model(helper.make_graph(
        [helper.make_node("Rfft", ["x"], ["y"], name="ort_rfft", domain="com.microsoft")], "g",
        [helper.make_tensor_value_info("x", F, [8])], [helper.make_tensor_value_info("y", F, None)]),
        opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)])
    assert _rules(check_graph(custom), "ort_rfft") == {"op-support"}


def test_input_type_outside_the_matrix_fails():
    model = _model([helper.make_node("MatMul", ["a", "b"], ["y"], name="int_matmul")],
                   [("a", I32, [2, 2]), ("b", I32, [2, 2])], [("y", I32, [2, 2])])
    verdict = check_graph(model)
    assert _rules(verdict, "int_matmul") == {"input-types"} and len(verdict.violations) == 2
    assert "INT32" in verdict.violations[0].message and "FLOAT16" in verdict.violations[0].message


def test_runtime_axes_fail_constant_axes_pass():
    axes = helper.make_node("Constant", [], ["k"], name="axes_const",
                            value=numpy_helper.from_array(np.array([1], np.int64)))
    model = _model([helper.make_node("ReduceMean", ["x", "axes"], ["y"], name="mean_runtime_axes"),
                    axes, helper.make_node("Identity", ["k"], ["k2"], name="alias"),
                    helper.make_node("ReduceMean", ["x", "k2"], ["z"], name="mean_const_axes"),
                    helper.make_node("Unsqueeze", ["x", "axes"], ["u"], name="unsqueeze_runtime_axes")],
                   [("x", F, [2, 3]), ("axes", I64, [1])], [("y", F, [2, 1]), ("z", F, [2, 1]), ("u", F, [2, 1, 3])])
    verdict = check_graph(model)
    assert _rules(verdict, "mean_runtime_axes") == {"constant-inputs"}
    assert _rules(verdict, "unsqueeze_runtime_axes") == {"constant-inputs"}
    assert not _rules(verdict, "mean_const_axes")
    assert "initializer" in verdict.violations[0].message


def test_int64_bool_and_double_where_the_matrix_has_none_fail():
    model = _model([helper.make_node("MatMul", ["a", "a"], ["m"], name="int64_matmul"),
                    helper.make_node("Cast", ["x"], ["b"], name="to_bool", to=B),
                    helper.make_node("Add", ["b", "b"], ["s"], name="bool_add"),
                    helper.make_node("Cast", ["x"], ["d"], name="to_double", to=F64),
                    helper.make_node("Add", ["x", "i64"], ["t"], name="int64_add_ok")],
                   [("a", I64, [2, 2]), ("x", F, [2, 2])],
                   [("m", I64, [2, 2]), ("s", B, [2, 2]), ("d", F64, [2, 2]), ("t", F, [2, 2])],
                   [numpy_helper.from_array(np.ones((2, 2), np.float32), "i64")])
    verdict = check_graph(model)
    assert _rules(verdict, "int64_matmul") == {"int64-bool-double"}
    assert _rules(verdict, "bool_add") == {"int64-bool-double"}
    assert _rules(verdict, "to_double") == {"int64-bool-double"}
    assert not _rules(verdict, "to_bool") and not _rules(verdict, "int64_add_ok")
    assert any("DOUBLE" in v.message and "FLOAT" in v.message for v in verdict.violations)


def test_opset_above_the_lowest_10x_parser_fails():
    model = _model([helper.make_node("Add", ["x", "x"], ["y"], name="add")], [("x", F, [2])], [("y", F, [2])],
                   opset=21)
    verdict = check_graph(model)
    assert [v.rule for v in verdict.violations] == ["opset"] and "9 to 20" in verdict.violations[0].message
    assert check_graph(model, trt_version="11").passed  # the 10.15 range (to 24), applied to 11
    assert support_matrix("10").opset_max == 20 and "DFT" not in support_matrix("10").supported_ops


def _attention(dtype=H, island=False, scale="q", mask=False):
    """softmax(scale(Q) K^T [+ mask]) V on [1, 2, 4, 8] tensors of ``dtype``; ``island``: Cast -> FP32 Softmax ->
    Cast; ``scale`` "q" (on Q before the first MatMul) or "scores" (a Div after it)."""
    const = [helper.make_tensor("c", dtype, [], [8 ** 0.5]), helper.make_tensor("m", dtype, [1, 1, 4, 4], [0.0] * 16)]
    q = "q" if scale != "q" else "qs"
    nodes = [helper.make_node("Transpose", ["k"], ["kt"], name="kt", perm=[0, 1, 3, 2])]
    nodes += [helper.make_node("Div", ["q", "c"], ["qs"], name="scale_q")] if scale == "q" else []
    nodes += [helper.make_node("MatMul", [q, "kt"], ["s"], name="bmm1")]
    last = "s"
    for op, extra in (("Div", "c"), ("Add", "m")):
        if (op == "Div" and scale == "scores") or (op == "Add" and mask):
            nodes.append(helper.make_node(op, [last, extra], [f"{last}_{op}"], name=f"{op}_scores"))
            last = f"{last}_{op}"
    if island:
        nodes.append(helper.make_node("Cast", [last], ["s32"], name="to_fp32", to=F))
        last = "s32"
    nodes.append(helper.make_node("Softmax", [last], ["p"], name="softmax", axis=-1))
    if island:
        nodes.append(helper.make_node("Cast", ["p"], ["p16"], name="to_fp16", to=dtype))
    nodes.append(helper.make_node("MatMul", ["p16" if island else "p", "v"], ["o"], name="bmm2"))
    shape = [1, 2, 4, 8]
    return _model(nodes, [("q", dtype, shape), ("k", dtype, shape), ("v", dtype, shape)], [("o", dtype, shape)],
                  const)


@pytest.mark.parametrize("form, fusable, scale", [
    ({}, True, "q/k"), ({"dtype": BF16, "scale": "scores", "mask": True}, True, "scores"),
    ({"island": True}, False, "q/k"), ({"dtype": F}, False, "q/k"), ({"dtype": F, "island": True}, False, "q/k")])
def test_attention_fusion_counts_fusable_and_unfusable_blocks(form, fusable, scale):
    verdict = check_graph(_attention(**form))
    assert verdict.passed  # a performance rule: never a violation
    [block] = verdict.attention.blocks
    assert (block.softmax, block.bmm1, block.bmm2, block.scale) == ("softmax", "bmm1", "bmm2", scale)
    assert block.fusable is fusable and verdict.attention.fusable == int(fusable) and bool(block.reason) != fusable
    assert block.casts == (2 if form.get("island") else 0)
    if form.get("island"):
        assert "Cast" in block.reason and block.dtypes[2] == "FLOAT"
    entry = verdict.to_dict()["attention"]
    assert (entry["rule"], entry["attention_blocks"], entry["fusable"]) == ("fused-attention", 1, int(fusable))
    assert json.loads(json.dumps(entry))["blocks"][0]["softmax"] == "softmax"


def test_softmax_outside_attention_is_not_counted():
    alone = _model([helper.make_node("Softmax", ["x"], ["y"], name="softmax", axis=-1)],
                   [("x", H, [2, 4])], [("y", H, [2, 4])])
    logits = _model([helper.make_node("MatMul", ["x", "w"], ["s"], name="head"),
                     helper.make_node("Softmax", ["s"], ["y"], name="softmax", axis=-1)],
                    [("x", H, [2, 4]), ("w", H, [4, 3])], [("y", H, [2, 3])])
    for model in (alone, logits):
        assert check_graph(model).attention.blocks == []


def _bad_encoder(art, out):
    """The tiny fp16 encoder with an Identity planted on its uint8 input: ONNX Runtime runs it, TensorRT cannot."""
    model = onnx.load(str(art.patch_encoder_fp16))
    graph = model.graph
    for node in graph.node:
        node.input[:] = ["patches_alias" if i == "patches" else i for i in node.input]
    graph.node.insert(0, helper.make_node("Identity", ["patches"], ["patches_alias"], name="planted_identity"))
    path = out / "patch_encoder.fp16.onnx"
    onnx.save(model, str(path))
    return path


def test_engine_build_refuses_a_violating_graph_before_tensorrt(tiny_export, tmp_path, capsys):
    import dataclasses

    from export.pipeline import engine_profiles, engines_from_onnx

    _, art = tiny_export
    bad = dataclasses.replace(art, patch_encoder_fp16=_bad_encoder(art, tmp_path), trt_verdicts={})
    profiles = engine_profiles(art.graphs.feature_dim)

    def build() -> None:
        engines_from_onnx(bad, tmp_path, profiles)

    assert report_errors(build) == 3
    err = capsys.readouterr().err
    assert "planted_identity" in err and "[uint8]" in err and "Cast" in err and "Traceback" not in err
    assert not list(tmp_path.glob("*.plan"))
    with pytest.raises(AccuracyError, match="planted_identity"):
        enforce([check_graph(bad.patch_encoder_fp16)])


def test_export_report_records_verdicts_and_refuses_without_tensorrt(tiny_export, tmp_path):
    import dataclasses

    from export.pipeline import engine_profiles, parity_from_onnx

    _, art = tiny_export
    profiles = engine_profiles(art.graphs.feature_dim)
    good = dataclasses.replace(art, trt_verdicts={})
    parity_from_onnx(good, tmp_path / "good", profiles, n_random=4)
    report = json.loads((tmp_path / "good" / "export_report.json").read_text())["tensorrt_compatibility"]
    assert [g["graph"] for g in report["graphs"]] == ["patch_encoder.onnx", "patch_encoder.fp16.onnx",
                                                      "aggregator.onnx"]
    assert all(g["passed"] and g["rules"] == list(RULES) and g["nodes"] and g["ops"] for g in report["graphs"])
    assert any("int8" in n for n in report["notes"])
    assert [(g["attention"]["attention_blocks"], g["attention"]["fusable"]) for g in report["graphs"]] == [
        TINY_ATTENTION["fp32"], TINY_ATTENTION["fp16"], TINY_ATTENTION["aggregator"]]
    assert report["fp16_attention"] == {"softmax": "fp16", "fp32_softmax": False}
    markdown = (tmp_path / "good" / "export_report.md").read_text()
    assert "## TensorRT compatibility" in markdown and "| pass | 4/4 |" in markdown

    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    bad = dataclasses.replace(art, patch_encoder_fp16=_bad_encoder(art, bad_dir), trt_verdicts={})
    with pytest.raises(AccuracyError, match=r"planted_identity.*\[uint8\]"):
        parity_from_onnx(bad, bad_dir, profiles, n_random=4)
    report = json.loads((bad_dir / "export_report.json").read_text())["tensorrt_compatibility"]
    fp16 = report["graphs"][1]
    assert not fp16["passed"] and {v["node"] for v in fp16["violations"]} == {"planted_identity"}
    assert "FAIL" in (bad_dir / "export_report.md").read_text()
