"""``patch_encoder.fp16.onnx``: strongly typed mixed precision for TensorRT 10.12+/11 (which obey ONNX dtypes).

Policy (both routes): the CLIP backbone's matmuls, attention (Q/K scale, MatMul, Softmax, MatMul), GELU and
residual adds run in FP16; FP32 stays where FP16 is unsafe: the spectral filter (DFT matmuls), the CLIP
normalisation, every LayerNormalization, and the FrequencyRestorationEstimator (FRE: cosine-similarity statistics,
unbiased std, Softmax, gates, fusion). Inputs (uint8 patches) and outputs (float32) keep their dtypes, so the
serving contract of :mod:`spai.model.specs` is unchanged.

The backbone's attention stays FP16 end to end (MatMul -> Softmax -> MatMul, no Cast between) because that is the
form TensorRT fuses into one attention kernel (which keeps its softmax statistics in FP32 itself); an FP32 Softmax
island (Cast -> Softmax -> Cast) prevents the fusion. ``fp32_softmax=True`` (``spai export --fp32-softmax``)
restores the island, to compare both on a GPU; :func:`export.trt_rules.attention_fusion` counts the fusable blocks.

``fre_fp16=True`` (``spai export --fre-fp16``) also runs the FRE's Linear layers in FP16 (its MatMul/Gemm nodes:
about half the FLOPs of spai-fusion-b16, 99.7 of 205.1 GFLOP a patch, are the per-layer projectors); their bias
adds, the cosine similarities, moments, LayerNorm, GELU, Softmax and gates stay FP32. Like every precision route,
the result passes the FP16 parity gates of :mod:`spai.infer.parity` or the export fails.

Routes, measured in docs/export.md:
* ``"convert"`` (default): rewrite the FP32 ONNX graph with onnxconverter-common's
  ``convert_float_to_float16(keep_io_types=True)`` and a node block list (everything outside ``/mfvit/vit/``)
  plus an op block list (LayerNormalization, ReduceMean, ...).
* ``"torch"``: export from PyTorch with the backbone in half precision and hand-placed FP32 LayerNorm islands.
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from export.onnx import check_graph, example_inputs, export_graph
from spai.errors import ExportError
from spai.files import atomic_path
from spai.lazy import lazy_import
from spai.model.nn.spai_model import to_unit_float
from spai.model.specs import patch_encoder_spec

onnx = lazy_import("onnx")
onnxconverter_common = lazy_import("onnxconverter_common")

FP16_SCOPE = "/mfvit/vit/"  # node-name prefix of the CLIP backbone in the TorchScript-exported graph
FILTER_SCOPE = "/mfvit/filter/"  # the spectral filter's DFT matmuls: always FP32
LINEAR_OPS = ("MatMul", "Gemm")
# Inside the backbone scope: normalisation stays FP32 (the SDPA scale arithmetic is on shape-derived scalars and
# follows its consumers). Softmax is not listed: attention stays FP16 for TensorRT's fused attention (see above).
FP32_OPS = ("LayerNormalization", "ReduceMean", "ReduceSum", "Pow", "Exp")
ROUTES = ("convert", "torch")


def fre_linear_nodes(graph: Any) -> set[str]:
    """Names of the FRE's Linear layers in an exported encoder graph: MatMul/Gemm nodes outside the backbone and
    the spectral filter whose second input is a weight (an initializer)."""
    weights = {i.name for i in graph.initializer}
    return {n.name for n in graph.node if n.op_type in LINEAR_OPS and not n.name.startswith((FP16_SCOPE, FILTER_SCOPE))
            and len(n.input) > 1 and n.input[1] in weights}


def fp16_from_onnx(onnx_path: str | os.PathLike, out_path: str | os.PathLike | None = None,
                   fre_fp16: bool = False, fp32_softmax: bool = False) -> Path:
    """Route ``convert``: FP32 ``patch_encoder.onnx`` -> mixed-precision ``patch_encoder.fp16.onnx`` (with
    ``fre_fp16`` the FRE's Linear layers in FP16 too; with ``fp32_softmax`` FP32 Softmax islands in attention)."""

    src = Path(onnx_path)
    dst = Path(out_path) if out_path else src.with_name(src.stem + ".fp16.onnx")
    model = _with_io_identities(drop_noop_casts(onnx.load(str(src))))
    half = fre_linear_nodes(model.graph) if fre_fp16 else set()
    fp32_nodes = [n.name for n in model.graph.node if not n.name.startswith(FP16_SCOPE) and n.name not in half]
    split_shared_initializers(model, set(fp32_nodes))
    fp16_casts = {n.name for n in model.graph.node if n.op_type == "Cast" and n.name.startswith(FP16_SCOPE)}
    try:
        with _own_cast_cleanup(onnxconverter_common.float16):
            mixed = onnxconverter_common.float16.convert_float_to_float16(
                model, keep_io_types=True, op_block_list=list(FP32_OPS), node_block_list=fp32_nodes,
                disable_shape_infer=False)
    except Exception as e:  # the converter raises bare Exceptions/ValueErrors on malformed graphs
        raise ExportError(f"FP16 conversion of {src} failed: {e}") from e
    retarget_casts(mixed, fp16_casts)
    restore_fp32_outputs(mixed)
    if fp32_softmax:
        fp32_softmax_islands(mixed)
    _save_checked(mixed, dst)
    return dst


@contextlib.contextmanager
def _own_cast_cleanup(float16: Any) -> Iterator[None]:
    """onnxconverter-common 1.16's ``remove_unnecessary_cast_node`` crashes when a Cast feeds several nodes
    ("'list' object has no attribute 'input'"); use :func:`fold_cast_pairs` instead while converting."""
    original = float16.remove_unnecessary_cast_node
    float16.remove_unnecessary_cast_node = fold_cast_pairs
    try:
        yield
    finally:
        float16.remove_unnecessary_cast_node = original


def fold_cast_pairs(graph: Any) -> None:
    """Remove FP32 -> FP16 -> FP32 round trips between two FP32 nodes (they would only lose precision)."""
    def cast_to(node: Any) -> int | None:
        return next((a.i for a in node.attribute if a.name == "to"), None) if node.op_type == "Cast" else None

    producer = {o: n for n in graph.node for o in n.output}
    rewire = {}
    for node in graph.node:
        up = producer.get(node.input[0]) if cast_to(node) == onnx.TensorProto.FLOAT else None
        if up is not None and cast_to(up) == onnx.TensorProto.FLOAT16 and _is_fp32(graph, producer, up.input[0]):
            rewire[node.output[0]] = up.input[0]
    outputs = {o.name for o in graph.output}
    for node in graph.node:
        node.input[:] = [rewire.get(i, i) for i in node.input]
    dead = [n for n in graph.node if n.output[0] in rewire and n.output[0] not in outputs]
    for node in dead:
        graph.node.remove(node)
    used = {i for n in graph.node for i in n.input} | outputs
    for node in [n for n in graph.node if cast_to(n) == onnx.TensorProto.FLOAT16 and n.output[0] not in used]:
        graph.node.remove(node)


def _is_fp32(graph: Any, producer: dict[str, Any], name: str) -> bool:
    """The Cast(to FP16) pairs we fold are the converter's own, inserted only on FP32 tensors; double-check
    what we can (graph inputs / value_info)."""
    for vi in list(graph.input) + list(graph.value_info):
        if vi.name == name:
            return vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    return name in producer


def retarget_casts(model: Any, names: set[str]) -> None:
    """The converter retypes a Cast's output to FP16 but leaves its ``to`` attribute at FLOAT (e.g. the
    shape-derived attention scale); make ``to`` agree with the declared output type."""
    declared = {v.name: v.type.tensor_type.elem_type for v in model.graph.value_info}
    for node in model.graph.node:
        if node.name not in names or declared.get(node.output[0]) != onnx.TensorProto.FLOAT16:
            continue
        for attr in node.attribute:
            if attr.name == "to" and attr.i == onnx.TensorProto.FLOAT:
                attr.i = onnx.TensorProto.FLOAT16


def restore_fp32_outputs(model: Any) -> None:
    """keep_io_types: graph outputs are FLOAT, so the Casts producing them must cast to FLOAT."""
    outputs = {o.name for o in model.graph.output}
    for out in model.graph.output:
        out.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    for node in model.graph.node:
        if node.op_type == "Cast" and node.output[0] in outputs:
            for attr in node.attribute:
                if attr.name == "to":
                    attr.i = onnx.TensorProto.FLOAT


def fp32_softmax_islands(model: Any) -> int:
    """Compute every FP16 Softmax in FP32 (Cast -> Softmax -> Cast, the ``fp32_softmax`` form); returns how many.

    The Softmax keeps its node name; its FP16 output tensor keeps its name too (now the second Cast's), so the
    declared value_info stays right."""
    inferred = onnx.shape_inference.infer_shapes(model)
    infos = list(inferred.graph.value_info) + list(inferred.graph.input)
    dtypes = {v.name: v.type.tensor_type.elem_type for v in infos}
    dtypes.update({i.name: i.data_type for i in model.graph.initializer})
    graph, half, wrapped = model.graph, onnx.TensorProto.FLOAT16, 0
    for softmax in [n for n in graph.node if n.op_type == "Softmax" and dtypes.get(n.input[0]) == half]:
        src, dst = softmax.input[0], softmax.output[0]
        softmax.input[0], softmax.output[0] = f"{src}__fp32", f"{dst}__fp32"
        at = list(graph.node).index(softmax)
        graph.node.insert(at + 1, onnx.helper.make_node("Cast", [softmax.output[0]], [dst], to=half,
                                                        name=f"{softmax.name}/fp32_out"))
        graph.node.insert(at, onnx.helper.make_node("Cast", [src], [softmax.input[0]], to=onnx.TensorProto.FLOAT,
                                                    name=f"{softmax.name}/fp32_in"))
        wrapped += 1
    return wrapped


def split_shared_initializers(model: Any, fp32_nodes: set[str]) -> None:
    """Give FP32 nodes their own copy of initializers they share with FP16 nodes (the exporter deduplicates
    equal tensors, e.g. all-zero biases; the converter would then feed one dtype to both sides)."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    users: dict[str, set[bool]] = {}
    for node in graph.node:
        for name in node.input:
            if name in inits:
                users.setdefault(name, set()).add(node.name in fp32_nodes)
    for name in [n for n, kinds in users.items() if len(kinds) == 2]:
        copy_ = graph.initializer.add()
        copy_.CopyFrom(inits[name])
        copy_.name = f"{name}__fp32"
        for node in graph.node:
            if node.name in fp32_nodes:
                node.input[:] = [copy_.name if i == name else i for i in node.input]


def drop_noop_casts(model: Any) -> Any:
    """Remove Casts to the dtype their input already has (open_clip's LayerNorm ends in ``x.to(orig_type)``);
    left in, the converter keeps them as FP32 casts inside the FP16 region."""
    inferred = onnx.shape_inference.infer_shapes(model)
    dtypes = {v.name: v.type.tensor_type.elem_type for v in
              list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}
    dtypes.update({i.name: i.data_type for i in model.graph.initializer})
    outputs = {o.name for o in model.graph.output}
    rewire = {}
    for node in list(model.graph.node):
        to = next((a.i for a in node.attribute if a.name == "to"), None)
        if node.op_type == "Cast" and dtypes.get(node.input[0]) == to and node.output[0] not in outputs:
            rewire[node.output[0]] = rewire.get(node.input[0], node.input[0])
            model.graph.node.remove(node)
    for node in model.graph.node:
        node.input[:] = [rewire.get(i, i) for i in node.input]
    return model


def _with_io_identities(model: Any) -> Any:
    """Put one FP32 Identity right after every FP32 graph input and before every output (all FP32).

    onnxconverter-common's cast clean-up crashes when a kept-FP32 graph input feeds several nodes; with a single
    consumer per IO tensor it only ever sees simple cast pairs. Other inputs (the uint8 ``patches``) get none: the
    converter leaves non-float IO alone, and TensorRT accepts UINT8 only as a network input read by a Cast (an
    Identity would be a UINT8 intermediate tensor, which its ONNX parser refuses).
    """
    graph = model.graph
    for inp in [i for i in graph.input if i.type.tensor_type.elem_type == onnx.TensorProto.FLOAT]:
        inner = f"{inp.name}__fp32"
        for node in graph.node:
            node.input[:] = [inner if i == inp.name else i for i in node.input]
        graph.node.insert(0, onnx.helper.make_node("Identity", [inp.name], [inner], name=f"io_in_{inp.name}"))
    for out in graph.output:
        inner = f"{out.name}__fp32"
        for node in graph.node:
            node.output[:] = [inner if o == out.name else o for o in node.output]
            node.input[:] = [inner if i == out.name else i for i in node.input]
        graph.node.append(onnx.helper.make_node("Identity", [inner], [out.name], name=f"io_out_{out.name}"))
    return model


def _save_checked(model: Any, dst: Path) -> None:
    check_graph(model, dst.name)
    with atomic_path(dst) as tmp:
        onnx.save(model, str(tmp))
        try:
            onnx.checker.check_model(str(tmp), full_check=True)
        except onnx.checker.ValidationError as e:
            raise ExportError(f"{dst.name} is not a valid ONNX graph: {e}") from e


class _Fp32LayerNorm(nn.Module):
    """LayerNorm computed in FP32 for a half-precision stream (cast in, normalise, cast back)."""

    def __init__(self, norm: nn.LayerNorm) -> None:
        super().__init__()
        self.norm = norm.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.float()).to(x.dtype)


def _half_linear(linear: nn.Linear) -> None:
    """Run ``linear`` in FP16 inside an FP32 stream: half weights, input cast in, output cast back."""
    linear.half()
    linear.register_forward_pre_hook(lambda _m, args: tuple(a.half() for a in args))
    linear.register_forward_hook(lambda _m, _args, out: out.float())


class _HalfBackboneEncoder(nn.Module):
    """Patch encoder with the CLIP backbone in FP16 (LayerNorm in FP32) and everything else in FP32; with
    ``fre_fp16`` the FRE's ``nn.Linear`` modules in FP16 too (MultiheadAttention's value projection, applied
    with ``F.linear`` on its packed weight, stays FP32 on this route)."""

    def __init__(self, model: nn.Module, fre_fp16: bool = False) -> None:
        super().__init__()
        self.mfvit = copy.deepcopy(model.mfvit).float().eval()
        vit = self.mfvit.vit.half()
        for name, module in list(vit.named_modules()):
            if isinstance(module, nn.LayerNorm):
                parent = vit.get_submodule(name.rsplit(".", 1)[0]) if "." in name else vit
                setattr(parent, name.rsplit(".", 1)[-1], _Fp32LayerNorm(module))
        if fre_fp16:
            for module in self.mfvit.features_processor.modules():
                if isinstance(module, nn.Linear):
                    _half_linear(module)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        mf = self.mfvit
        patches = to_unit_float(patches)
        low, high = mf.filter(patches)
        views = (torch.cat([patches, low, high]) - mf.mean) / mf.std
        tokens, embeddings = mf.vit(views.half())
        tokens, embeddings = tokens.float(), embeddings.float()
        semantic = embeddings[: patches.shape[0]] if mf.features_processor.uses_semantics else None
        return mf.features_processor.forward_stacked(tokens, semantic)


def fp16_from_torch(model: nn.Module, out_path: str | os.PathLike, opset: int | None = None,
                    fre_fp16: bool = False, fp32_softmax: bool = False) -> Path:
    """Route ``torch``: export the half-precision-backbone encoder directly (FP32 IO); its attention Softmax is
    FP16 as exported, with ``fp32_softmax`` wrapped in FP32 islands afterwards."""
    dst = Path(out_path)
    dim = int(model.feature_dim)
    module = _HalfBackboneEncoder(model, fre_fp16)
    path = export_graph(module, example_inputs(dim)["patch_encoder"], patch_encoder_spec(dim), dst, opset)
    if fp32_softmax:
        graph = onnx.load(str(path))
        fp32_softmax_islands(graph)
        _save_checked(graph, path)
    return path


def patch_encoder_fp16(model: nn.Module | None, onnx_path: str | os.PathLike, route: str = "convert",
                       fre_fp16: bool = False, fp32_softmax: bool = False) -> Path:
    """``patch_encoder.fp16.onnx`` next to ``onnx_path`` by ``route`` (``convert`` needs only the ONNX file);
    ``fre_fp16``: the FRE's Linear layers in FP16 as well; ``fp32_softmax``: FP32 Softmax islands in attention."""
    if route not in ROUTES:
        raise ExportError(f"Unknown FP16 route {route!r}; choose one of {', '.join(ROUTES)}.")
    src = Path(onnx_path)
    dst = src.with_name(src.stem + ".fp16.onnx")
    if route == "convert":
        return fp16_from_onnx(src, dst, fre_fp16, fp32_softmax)
    if model is None:
        raise ExportError("FP16 route 'torch' needs the PyTorch model.")
    return fp16_from_torch(model, dst, fre_fp16=fre_fp16, fp32_softmax=fp32_softmax)
