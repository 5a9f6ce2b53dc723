"""The int8 CPU patch encoder: ``patch_encoder.int8.onnx``, ONNX Runtime dynamic quantisation of the fp32 graph.

What is quantised (chosen by measurement, docs/benchmarks.md): every MatMul with a constant weight -- the
backbone's attention projections and MLPs, the FRE's projectors, gates and fusion layers -- with per-channel
symmetric int8 weights and uint8 activations quantised per call (``DynamicQuantizeLinear``; ONNX Runtime fuses
them into ``DynamicQuantizeMatMul`` / ``MatMulIntegerToFloat``, u8s8 GEMMs that use AVX-512 VNNI / AVX-VNNI / AMX).
What stays fp32: the spectral filter's MatMuls (the high-pass view is ``x - low``, which int8 would swamp), the
patch-embedding convolution, the attention core (QK^T and AV multiply two activations: ``MatMulConstBOnly``),
softmax, every LayerNorm, GELU/sigmoid, the cosine-similarity statistics and the context branch's reductions,
and the whole aggregator (a separate fp32 graph). Static (QDQ) quantisation was not chosen: its activation ranges
come from calibration images, and images of any content would fall outside them; dynamic ranges follow each call.

The input keeps the deployed contract (:data:`spai.model.specs.PATCHES_INPUT`: N x 3 x 224 x 224 uint8).
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

from spai.errors import ExportError
from spai.lazy import lazy_import
from spai.model.specs import ENCODER_FILES, PATCHES_INPUT

onnx = lazy_import("onnx")
ort_quantization = lazy_import("onnxruntime.quantization")
log = logging.getLogger(__name__)

FP32_SCOPES = ("/mfvit/filter/",)  # node-name scopes (torch module paths) never quantised
INT8_OPS = frozenset({"MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "DynamicQuantizeLinear",
                      "ConvInteger", "QLinearMatMul"})


def fp32_nodes(model: Any) -> list[str]:
    """Names of the MatMul nodes that must stay fp32 (the spectral filter's)."""
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and n.name.startswith(FP32_SCOPES)]


def fold_weight_identities(model: Any) -> Any:
    """Feed weights shared by several layer calls (the exporter routes them through ``Identity`` nodes) straight
    to their consumers, so that the quantiser sees constant weights there too (in place; returns ``model``)."""
    weights = {i.name for i in model.graph.initializer}
    alias = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "Identity" and n.input[0] in weights}
    outputs = {o.name for o in model.graph.output}
    for node in model.graph.node:
        for k, name in enumerate(node.input):
            if name in alias:
                node.input[k] = alias[name]
    keep = [n for n in model.graph.node if not (n.op_type == "Identity" and n.output[0] in alias
                                                and n.output[0] not in outputs)]
    del model.graph.node[:]
    model.graph.node.extend(keep)
    return model


def patch_encoder_int8(fp32_onnx: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Write ``patch_encoder.int8.onnx`` (next to ``fp32_onnx`` unless ``out`` is given) and return its path."""

    from spai.files import atomic_path

    src = Path(fp32_onnx)
    dst = Path(out) if out is not None else src.with_name(ENCODER_FILES["int8"])
    model = fold_weight_identities(onnx.load(str(src)))
    log.info("quantising %s to int8 (dynamic, per-channel weights) ...", src.name)
    quiet = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # its "consider pre-processing" advice concerns static ranges
    try:
        with atomic_path(dst) as tmp:
            ort_quantization.quantize_dynamic(model, tmp, op_types_to_quantize=["MatMul"], per_channel=True,
                             weight_type=ort_quantization.QuantType.QInt8, nodes_to_exclude=fp32_nodes(model),
                             extra_options={"MatMulConstBOnly": True})
            check_int8_graph(tmp)
    except (ValueError, RuntimeError, onnx.checker.ValidationError) as e:
        raise ExportError(f"int8 quantisation of {src} failed: {e}") from e
    finally:
        logging.getLogger().setLevel(quiet)
    return dst


def check_int8_graph(path: str | os.PathLike) -> None:
    """The int8 graph keeps the uint8 patches input and holds int8 GEMMs (ExportError otherwise)."""
    model = onnx.load(str(path), load_external_data=False)
    inp = model.graph.input[0]
    elem = onnx.helper.tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type)
    if inp.name != PATCHES_INPUT.name or elem != PATCHES_INPUT.np_dtype:
        raise ExportError(f"{path}: input {inp.name!r} ({elem}) breaks the {PATCHES_INPUT.name!r} uint8 contract.")
    if not any(n.op_type in INT8_OPS for n in model.graph.node):
        raise ExportError(f"{path}: no MatMul was quantised; is this the patch encoder?")


def _scope(name: str) -> str:
    """A node's module path with layer indices folded (``/mfvit/vit/mlp/c_fc_3/MatMul`` -> ``vit/mlp/c_fc``)."""
    scope = name.rsplit("/", 1)[0].removeprefix("/mfvit/")
    scope = re.sub(r"_\d+(?=/|$)", "", re.sub(r"\.\d+(?=[./]|$)", ".*", scope))
    return scope if scope and scope != "/mfvit" else "fre (single-key attention)"


def precision_table_onnx(path: str | os.PathLike) -> dict[str, Any]:
    """Which layers of an encoder graph run in int8 and which GEMMs and precision-critical ops stay fp32."""
    model = onnx.load(str(path), load_external_data=False)
    constants = {i.name for i in model.graph.initializer} | {o for n in model.graph.node if n.op_type == "Constant"
                                                             for o in n.output}
    constants |= {n.output[0] for n in model.graph.node if n.op_type == "Identity" and n.input[0] in constants}
    gemm_int8 = Counter(_scope(n.name) for n in model.graph.node if n.op_type in ("MatMulInteger", "ConvInteger"))
    gemm_fp32 = Counter(f"{_scope(n.name)} ({'weights' if constants & set(n.input) else 'two activations'})"
                        for n in model.graph.node if n.op_type in ("MatMul", "Gemm", "Conv"))
    kept = Counter(n.op_type for n in model.graph.node
                   if n.op_type in ("LayerNormalization", "Softmax", "ReduceMean", "ReduceSum", "ReduceMax",
                                    "ReduceMin", "Sqrt", "Div", "Erf", "Sigmoid"))
    return {"precision": "int8", "int8_gemms": dict(sorted(gemm_int8.items())),
            "fp32_gemms": dict(sorted(gemm_fp32.items())), "fp32_ops": dict(sorted(kept.items()))}
