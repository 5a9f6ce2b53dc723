"""Will TensorRT's ONNX parser take this graph? The rules onnx-tensorrt enforces and ONNX Runtime does not, checked
on CPU before any engine is built (TensorRT is not installable on our machines, so only this check sees them).

Rules (data: ``export/data/trt_onnx_support.json``, with its source and version):

* ``uint8``: a UINT8 graph input is read only by Cast (or CastLike), and no node produces a UINT8 tensor that is
  not a graph output (onnx-tensorrt ``ModelImporter.cpp``: "TensorRT does not support UINT8 types for
  intermediate tensors").
* ``op-support``: every op is a "Y" row of onnx-tensorrt's ``docs/operators.md`` support matrix, in the default
  ONNX domain.
* ``input-types``: every input's type (from ONNX shape inference) is in the op's Supported Types column.
* ``constant-inputs``: inputs the Restrictions column requires as initializers (Reduce*/Squeeze/Unsqueeze axes,
  ...) are initializers or Constant outputs (or an Identity of one).
* ``int64-bool-double``: INT64 and BOOL only where the op's column lists them (TensorRT 10 has them natively, per
  op); no DOUBLE tensor at all (weights would be cast down to FLOAT, clamped: a silent difference from ORT).
* ``opset``: the default-domain opset is within the parser's range for that TensorRT major version (for "10" the
  lowest 10.x we support, so an engine builds on every 10.x).

Performance rule (counted and reported, never a refusal):

* ``fused-attention``: how many attention blocks (a Softmax fed by a MatMul, through optional Mul/Div scale, Add
  mask and Cast nodes, whose output feeds a MatMul) are in the form TensorRT fuses into one attention kernel:
  MatMul -> [Mul/Div] -> [Add] -> Softmax -> MatMul all FP16/BF16 with no Cast between (TensorRT developer guide,
  "Fused Attention"; NVIDIA/TensorRT#2981). An FP32 Softmax island (Cast -> Softmax -> Cast) blocks the fusion.

Light: ``onnx`` is imported on first use, no torch.
"""

from __future__ import annotations

import functools
import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from spai.errors import AccuracyError, ExportError
from spai.lazy import lazy_import

onnx = lazy_import("onnx")

SUPPORT_FILE = Path(__file__).resolve().parent / "data" / "trt_onnx_support.json"
RULES = ("uint8", "op-support", "input-types", "constant-inputs", "int64-bool-double", "opset")
DEFAULT_DOMAINS = ("", "ai.onnx")
CASTS = ("Cast", "CastLike")  # the only ops whose Supported Types list UINT8
ALIASES = ("Identity",)  # onnx-tensorrt passes weights through these: an Identity of a constant is a constant
MAX_LISTED = 20  # violations spelled out in a refusal; all of them are in the export report
ATTENTION_RULE = "fused-attention"
SCORE_OPS = ("Mul", "Div", "Add", "Cast")  # what may sit between the first MatMul and the Softmax of an attention
SCALE_OPS = ("Mul", "Div")
LAYOUT_OPS = ("Transpose", "Reshape")  # between a Q/K scale and the first MatMul
HALF_TYPES = ("FLOAT16", "BFLOAT16")


@dataclass(frozen=True)
class SupportMatrix:
    """onnx-tensorrt's support data for one TensorRT major version (see ``trt_onnx_support.json``)."""

    trt_version: str
    ops: dict[str, frozenset[int] | None]  # op -> allowed ONNX element types of its data inputs (None: unsupported)
    constant_inputs: dict[str, dict[int, str]]  # op -> input index -> input name, must be build-time constants
    untyped_inputs: dict[str, frozenset[int]]  # op -> input indices the Supported Types column does not govern
    opset_min: int
    opset_max: int
    uint8_constant_allowed: bool
    source: str

    @property
    def supported_ops(self) -> frozenset[str]:
        """The ops the parser imports ("Y" rows)."""
        return frozenset(op for op, types in self.ops.items() if types is not None)


@dataclass(frozen=True)
class Violation:
    """One broken rule: the node (its name, or the graph input / tensor), its op, the rule and how to fix it."""

    node: str
    op: str
    rule: str
    message: str

    def __str__(self) -> str:
        return f"node {self.node!r} ({self.op or 'graph'}): [{self.rule}] {self.message}"


@dataclass(frozen=True)
class AttentionBlock:
    """One attention block: its Softmax and MatMuls, the dtypes between them, and whether TensorRT can fuse it."""

    softmax: str  # node names
    bmm1: str
    bmm2: str
    dtypes: tuple[str, ...]  # element types of BMM1's output, each node's output up to BMM2's (Casts included)
    casts: int  # Cast nodes between BMM1 and BMM2
    scale: str  # where the attention scale is applied: "q/k" (before BMM1), "scores" (Mul/Div after it), "none"
    fusable: bool
    reason: str  # why not fusable ("" when it is)


@dataclass
class AttentionFusion:
    """The ``fused-attention`` performance rule's count for one graph (never a refusal)."""

    blocks: list[AttentionBlock] = field(default_factory=list)
    rule: str = ATTENTION_RULE

    @property
    def fusable(self) -> int:
        """How many of the blocks TensorRT can fuse."""
        return sum(b.fusable for b in self.blocks)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the counts and every block."""
        return {"rule": self.rule, "attention_blocks": len(self.blocks), "fusable": self.fusable,
                "blocks": [asdict(b) for b in self.blocks]}

    def summary(self) -> str:
        """One phrase: "k/n attention blocks fusable"."""
        return f"{self.fusable}/{len(self.blocks)} attention blocks fusable"


@dataclass
class TrtVerdict:
    """What :func:`check_graph` found in one graph."""

    graph: str
    trt_version: str
    nodes: int
    ops: dict[str, int]  # op -> how many nodes use it
    opset: int
    rules: tuple[str, ...] = RULES
    violations: list[Violation] = field(default_factory=list)
    unknown_types: int = 0  # node inputs whose type shape inference could not tell (input-type rules skip them)
    attention: AttentionFusion = field(default_factory=AttentionFusion)  # performance rule: never fails the graph

    @property
    def passed(self) -> bool:
        return not self.violations

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, for ``export_report.json``."""
        return {**asdict(self), "rules": list(self.rules), "passed": self.passed, "attention": self.attention.to_dict()}

    def summary(self) -> str:
        """One line: graph, counts, result, fusable attention blocks."""
        result = "pass" if self.passed else f"{len(self.violations)} violation(s)"
        return (f"{self.graph}: {self.nodes} nodes, {len(self.ops)} ops, opset {self.opset}, TensorRT "
                f"{self.trt_version} rules {', '.join(self.rules)}: {result}; {self.attention.summary()}")


@functools.cache
def support_matrix(trt_version: str = "10") -> SupportMatrix:
    """The support data for TensorRT ``trt_version`` ("10" or "11": a major version, checked conservatively)."""
    data = json.loads(SUPPORT_FILE.read_text())
    major = str(trt_version).split(".")[0]
    if major not in data["versions"]:
        raise ExportError(f"no TensorRT support data for version {trt_version!r} in {SUPPORT_FILE.name}; known: "
                          f"{', '.join(sorted(data['versions']))} (add the version's docs/operators.md there)")
    bounds = data["versions"][major]
    to_onnx = {name: int(getattr(onnx.TensorProto, onnx_name)) for name, onnx_name in data["type_names"].items()}
    ops = {op: None if types is None else frozenset(to_onnx[t] for t in types) for op, types in data["ops"].items()}
    constant = {op: {int(i): name for i, name in inputs.items()} for op, inputs in data["constant_inputs"].items()}
    return SupportMatrix(
        major, ops, constant, {op: frozenset(idx) for op, idx in data["untyped_inputs"].items()},
        int(bounds["opset_min"]), int(bounds["opset_max"]), bool(bounds["uint8_constant_allowed"]),
        f"{data['source']}; {data['version']} (read {data['read']}); {bounds['source']}")


@dataclass
class _Graph:
    """A model with what the rules need: every node (subgraphs too), tensor types, constants, outputs."""

    model: Any
    nodes: list[Any]
    types: dict[str, int]
    constants: set[str]
    initializers: set[str]
    inputs: list[str]
    outputs: set[str]


def _subgraphs(node: Any) -> Iterator[Any]:
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        yield from attr.graphs


def _walk(graph: Any) -> Iterator[tuple[Any, Any]]:
    """(graph, node) for every node of ``graph`` and of the subgraphs of its If/Loop/Scan nodes."""
    for node in graph.node:
        yield graph, node
        for sub in _subgraphs(node):
            yield from _walk(sub)


def _graph_from_model(model: Any) -> _Graph:
    """Infer types (ONNX shape inference, not strict) and index the model for the rules."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception as e:  # onnx raises InferenceError / ValidationError subclasses of Exception
        raise ExportError(f"ONNX shape inference failed on {model.graph.name!r}, so its types cannot be checked "
                          f"against TensorRT's rules: {e}. Check the graph with onnx.checker.check_model.") from e
    walked = list(_walk(inferred.graph))
    graphs = [inferred.graph] + [g for g, _ in walked if g is not inferred.graph]
    types: dict[str, int] = {}
    initializers: set[str] = set()
    for g in {id(g): g for g in graphs}.values():
        for vi in list(g.input) + list(g.output) + list(g.value_info):
            if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
                types[vi.name] = vi.type.tensor_type.elem_type
        for init in g.initializer:
            types[init.name] = init.data_type
            initializers.add(init.name)
    nodes = [n for _, n in walked]
    constants = set(initializers)
    for node in nodes:  # topological order: an Identity of a constant follows its source
        if node.op_type == "Constant" or (node.op_type in ALIASES and node.input and node.input[0] in constants):
            constants.update(node.output)
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and node.output[0] not in types:
                    types[node.output[0]] = attr.t.data_type
    inputs = [i.name for i in inferred.graph.input if i.name not in initializers]
    return _Graph(inferred, nodes, types, constants, initializers, inputs, {o.name for o in inferred.graph.output})


def _type_name(elem_type: int) -> str:
    return onnx.TensorProto.DataType.Name(elem_type)


def uint8_violations(g: _Graph, m: SupportMatrix) -> list[Violation]:
    """UINT8 only as a network input (read by Cast) or output."""
    u8 = int(onnx.TensorProto.UINT8)
    u8_inputs = {name for name in g.inputs if g.types.get(name) == u8}
    found = [Violation(n.name, n.op_type, "uint8",
                       f"reads the UINT8 graph input {name!r}; TensorRT takes UINT8 only as a network input that "
                       f"feeds a Cast directly (NVIDIA/TensorRT#3985). Fix: make a Cast (to FLOAT) the only reader "
                       f"of {name!r} and move this {n.op_type} after it.")
             for n in g.nodes if n.op_type not in CASTS for name in n.input if name in u8_inputs]
    for n in g.nodes:
        if n.op_type == "Constant" and m.uint8_constant_allowed:
            continue
        found += [Violation(n.name, n.op_type, "uint8",
                            f"produces the UINT8 tensor {out!r}, which is not a graph output (\"TensorRT does not "
                            f"support UINT8 types for intermediate tensors\", onnx-tensorrt ModelImporter.cpp). Fix: "
                            f"compute it in INT32 or FLOAT (Cast before this node), or make it a graph output.")
                  for out in n.output if out and g.types.get(out) == u8 and out not in g.outputs]
    return found


def op_violations(g: _Graph, m: SupportMatrix) -> list[Violation]:
    """Ops outside the support matrix or outside the default ONNX domain."""
    found = []
    for n in g.nodes:
        if n.domain not in DEFAULT_DOMAINS:
            found.append(Violation(n.name, f"{n.domain}.{n.op_type}", "op-support",
                                   f"is in domain {n.domain!r}, which TensorRT's ONNX parser does not import (it "
                                   f"would need a TensorRT plugin of that name). Fix: export it as standard ONNX ops."))
        elif m.ops.get(n.op_type) is None:
            listed = "marked unsupported" if n.op_type in m.ops else "absent"
            found.append(Violation(n.name, n.op_type, "op-support",
                                   f"is {listed} in onnx-tensorrt's support matrix for TensorRT {m.trt_version} "
                                   f"(docs/operators.md). Fix: express it with supported ops (as the spectral filter "
                                   f"does the DFT with MatMuls) or provide a TensorRT plugin."))
    return found


def input_type_violations(g: _Graph, m: SupportMatrix) -> tuple[list[Violation], int]:
    """Input types outside the op's Supported Types (``input-types``; INT64/BOOL: ``int64-bool-double``), and how
    many inputs had no inferred type. UINT8 inputs are left to the ``uint8`` rule, DOUBLE tensors to
    :func:`double_violations`."""
    found, unknown = [], 0
    u8, i32 = int(onnx.TensorProto.UINT8), int(onnx.TensorProto.INT32)
    special = {int(onnx.TensorProto.INT64), int(onnx.TensorProto.BOOL)}
    for n in g.nodes:
        allowed = m.ops.get(n.op_type) if n.domain in DEFAULT_DOMAINS else None
        if allowed is None:
            continue  # op-support already refuses the node
        for idx, name in enumerate(n.input):
            if not name or idx in m.untyped_inputs.get(n.op_type, ()):
                continue
            t = g.types.get(name)
            if t is None:
                unknown += 1
                continue
            if t == u8 and name in g.initializers:
                t = i32  # the parser converts UINT8 weights to INT32
            if t in allowed or t in (u8, int(onnx.TensorProto.DOUBLE)):
                continue
            rule = "int64-bool-double" if t in special else "input-types"
            listed = ", ".join(sorted(_type_name(a) for a in allowed))
            hint = (" TensorRT 10 supports INT64 and BOOL natively only in the ops that list them."
                    if rule == "int64-bool-double" else "")
            found.append(Violation(n.name, n.op_type, rule,
                                   f"input {idx} {name!r} is {_type_name(t)}; TensorRT {m.trt_version} takes {listed} "
                                   f"for {n.op_type}.{hint} Fix: Cast it to one of those before this node."))
    return found, unknown


def double_violations(g: _Graph, m: SupportMatrix) -> list[Violation]:
    """No DOUBLE tensor: no op lists it, and DOUBLE weights would be cast down to FLOAT, clamped."""
    f64 = int(onnx.TensorProto.DOUBLE)
    producer = {out: n for n in g.nodes for out in n.output}
    found = []
    for name, t in g.types.items():
        if t != f64:
            continue
        node = producer.get(name)
        found.append(Violation(node.name if node else name, node.op_type if node else "", "int64-bool-double",
                               f"tensor {name!r} is DOUBLE; TensorRT {m.trt_version} has no DOUBLE layers and casts "
                               f"DOUBLE weights to FLOAT, clamping to +-FLT_MAX (ONNX Runtime would not). Fix: "
                               f"export it as FLOAT (model.float() before export, or Cast to FLOAT)."))
    return found


def constant_input_violations(g: _Graph, m: SupportMatrix) -> list[Violation]:
    """Inputs the Restrictions column requires to be initializers."""
    found = []
    for n in g.nodes:
        for idx, what in m.constant_inputs.get(n.op_type, {}).items():
            if idx < len(n.input) and n.input[idx] and n.input[idx] not in g.constants:
                found.append(Violation(n.name, n.op_type, "constant-inputs",
                                       f"input {idx} ({what}) {n.input[idx]!r} is computed at run time; TensorRT "
                                       f"{m.trt_version} requires {n.op_type}'s {what} to be an initializer. Fix: "
                                       f"make it a constant (fixed axes in the model, or constant-fold the graph, "
                                       f"e.g. onnxsim / polygraphy surgeon sanitize --fold-constants)."))
    return found


def opset_of(model: Any) -> int:
    """The model's default-domain opset (0 if it imports none)."""
    return max((o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS), default=0)


def opset_violations(model: Any, m: SupportMatrix) -> list[Violation]:
    """Default-domain opset within the parser's range."""
    opset = opset_of(model)
    if m.opset_min <= opset <= m.opset_max:
        return []
    return [Violation(model.graph.name or "(model)", "", "opset",
                      f"the graph imports ONNX opset {opset}; TensorRT {m.trt_version}'s parser takes opsets "
                      f"{m.opset_min} to {m.opset_max} (on every {m.trt_version}.x we support). Fix: export with "
                      f"an opset in that range (spai.model.specs.OPSET, torch.onnx.export(opset_version=...)).")]


def _path_to_matmul(name: str, producer: dict[str, Any], depth: int = 6) -> list[Any] | None:
    """The nodes from the producer of ``name`` back to a MatMul through ``SCORE_OPS`` (MatMul first, then towards
    the Softmax), or None if no MatMul is reached."""
    node = producer.get(name)
    if node is None or depth == 0:
        return None
    if node.op_type == "MatMul":
        return [node]
    if node.op_type not in SCORE_OPS:
        return None
    for inp in node.input:
        path = _path_to_matmul(inp, producer, depth - 1)
        if path:
            return path + [node]
    return None


def _path_from_softmax(name: str, consumers: dict[str, list[Any]], depth: int = 3) -> list[Any] | None:
    """The nodes from a Softmax output forward to the MatMul that reads it as its first input, through Casts."""
    for node in consumers.get(name, []) if depth else []:
        if node.op_type == "MatMul" and node.input[0] == name:
            return [node]
        if node.op_type == "Cast":
            path = _path_from_softmax(node.output[0], consumers, depth - 1)
            if path:
                return [node] + path
    return None


def _scale_site(bmm1: Any, between: list[Any], producer: dict[str, Any]) -> str:
    """Where the attention scale is applied: on Q/K before BMM1 (TensorRT's documented form), on the scores, or
    nowhere visible."""
    if any(n.op_type in SCALE_OPS for n in between):
        return "scores"
    for name in bmm1.input:
        node = producer.get(name)
        while node is not None and node.op_type in LAYOUT_OPS:
            node = producer.get(node.input[0])
        if node is not None and node.op_type in SCALE_OPS:
            return "q/k"
    return "none"


def attention_fusion(g: _Graph) -> AttentionFusion:
    """The ``fused-attention`` count: every attention block (Softmax fed by a MatMul, feeding a MatMul) and
    whether it is MatMul -> [Mul/Div] -> [Add] -> Softmax -> MatMul in FP16/BF16 with no Cast between."""
    producer = {out: n for n in g.nodes for out in n.output}
    consumers: dict[str, list[Any]] = {}
    for n in g.nodes:
        for name in n.input:
            consumers.setdefault(name, []).append(n)
    blocks = []
    for softmax in (n for n in g.nodes if n.op_type == "Softmax" and n.domain in DEFAULT_DOMAINS):
        up, down = _path_to_matmul(softmax.input[0], producer), _path_from_softmax(softmax.output[0], consumers)
        if not up or not down:
            continue
        chain = up + [softmax] + down
        dtypes = tuple(_type_name(g.types[n.output[0]]) if n.output[0] in g.types else "UNKNOWN" for n in chain)
        casts = sum(n.op_type == "Cast" for n in chain)
        wrong = sorted({t for t in dtypes if t not in HALF_TYPES})
        reason = "; ".join(filter(None, [f"{casts} Cast(s) between the MatMuls" if casts else "",
                                         f"{'/'.join(wrong)} tensors (needs FP16/BF16)" if wrong else ""]))
        blocks.append(AttentionBlock(softmax.name, up[0].name, down[-1].name, dtypes, casts,
                                     _scale_site(up[0], up[1:], producer), not reason, reason))
    return AttentionFusion(blocks)


def check_graph(graph: str | os.PathLike | Any, *, trt_version: str = "10") -> TrtVerdict:
    """Check an ONNX graph (a path or a ``ModelProto``) against TensorRT ``trt_version``'s parser rules."""
    m = support_matrix(trt_version)
    if isinstance(graph, (str, os.PathLike)):
        name = Path(graph).name
        model = onnx.load(str(graph), load_external_data=False)  # types only: weights' values are not needed
    else:
        model, name = graph, graph.graph.name or "(model)"
    g = _graph_from_model(model)
    typed, unknown = input_type_violations(g, m)
    violations = (uint8_violations(g, m) + op_violations(g, m) + typed + double_violations(g, m)
                  + constant_input_violations(g, m) + opset_violations(model, m))
    ops = Counter(n.op_type if n.domain in DEFAULT_DOMAINS else f"{n.domain}.{n.op_type}" for n in g.nodes)
    return TrtVerdict(name, m.trt_version, len(g.nodes), dict(ops.most_common()), opset_of(model),
                      violations=violations, unknown_types=unknown, attention=attention_fusion(g))


def enforce(verdicts: Iterable[TrtVerdict]) -> None:
    """Raise :class:`spai.AccuracyError` (exit code 3) naming each broken rule's node, rule and fix."""
    failed = [v for v in verdicts if not v.passed]
    if not failed:
        return
    lines = []
    for v in failed:
        lines.append(f"{v.graph}: {len(v.violations)} violation(s) of TensorRT {v.trt_version}'s ONNX parser rules:")
        lines += [f"  - {x}" for x in v.violations[:MAX_LISTED]]
        if len(v.violations) > MAX_LISTED:
            lines.append(f"  ... and {len(v.violations) - MAX_LISTED} more (all in export_report.json)")
    raise AccuracyError("TensorRT cannot build this export; nothing was handed to TensorRT.\n" + "\n".join(lines)
                        + f"\n(rules and data: export/trt_rules.py, export/data/{SUPPORT_FILE.name})")


def verdicts_markdown(verdicts: Iterable[TrtVerdict], notes: Iterable[str] = ()) -> list[str]:
    """The "TensorRT compatibility" section of ``export_report.md``."""
    lines = ["## TensorRT compatibility", "",
             "| graph | TensorRT | opset | nodes | ops | rules | result | fusable attention blocks |",
             "|---|---|---|---|---|---|---|---|"]
    listed = list(verdicts)
    for v in listed:
        result = "pass" if v.passed else f"FAIL ({len(v.violations)})"
        lines.append(f"| {v.graph} | {v.trt_version}.x | {v.opset} | {v.nodes} | {len(v.ops)} | "
                     f"{', '.join(v.rules)} | {result} | {v.attention.fusable}/{len(v.attention.blocks)} |")
    lines += [f"- {v.graph}: {x}" for v in listed for x in v.violations[:MAX_LISTED]]
    for v in listed:
        reasons = Counter(b.reason for b in v.attention.blocks if not b.fusable)
        lines += [f"- {v.graph}: [{ATTENTION_RULE}] {n} attention block(s) not fusable by TensorRT: {reason}"
                  for reason, n in reasons.items()]
    return lines + [f"- note: {n}" for n in notes]
