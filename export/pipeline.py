"""Checkpoint -> ONNX (fp32 + fp16, int8 on request) -> parity report -> TensorRT engines: the steps the CLIs
chain."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from export.compare import load_images, write_report
from export.fp16 import patch_encoder_fp16
from export.onnx import OnnxExport, ensure_writable_dir, model_from_source, onnx_from_torch
from export.quantize import patch_encoder_int8, precision_table_onnx
from export.trt_rules import TrtVerdict, check_graph, verdicts_markdown
from export.trt_rules import enforce as enforce_trt_rules
from spai.files import sha256_file
from spai.infer.cpu import cpu_flags, cpu_identity
from spai.infer.evidence import evidence_for, record_verdicts
from spai.infer.parity import Gates, ParityReport, compare_routes, enforce
from spai.infer.routes import ROUTES, runners_for
from spai.infer.runners import CPU_CHUNKS, OrtRunner, Route
from spai.model.specs import (
    PATCHES,
    PLAN_FILES,
    Shape,
    aggregator_spec,
    max_shapes,
    min_shapes,
    patch_encoder_spec,
    trt_profile,
)

Profiles = dict[str, dict[str, tuple[Shape, Shape, Shape]]]  # graph -> input -> (min, opt, max)

log = logging.getLogger(__name__)


@dataclass
class OnnxArtifacts:
    """What :func:`onnx_from_checkpoint` produced (``patch_encoder_int8`` with ``--precision int8``)."""

    model: Any
    source: str
    graphs: OnnxExport
    patch_encoder_fp16: Path
    fre_fp16: bool = False  # the FRE's Linear layers are FP16 in patch_encoder_fp16
    patch_encoder_int8: Path | None = None
    checkpoint_sha256: str = ""  # the checkpoint file's, where the model came from one
    trt_verdicts: dict[str, TrtVerdict] = field(default_factory=dict)  # ONNX path -> TensorRT rules' verdict
    fp32_softmax: bool = False  # patch_encoder_fp16's attention Softmax runs in FP32 islands (no fused attention)


def onnx_from_checkpoint(source: str | os.PathLike, out_dir: str | os.PathLike, *, fp16_route: str = "convert",
                         opset: int | None = None, fre_fp16: bool = False, precisions: Sequence[str] = (),
                         fp32_softmax: bool = False) -> OnnxArtifacts:
    """Load a checkpoint / named config and write ``patch_encoder.onnx``, ``patch_encoder.fp16.onnx`` (with
    ``fre_fp16`` its FRE Linear layers in FP16 too, with ``fp32_softmax`` its attention Softmax in FP32 islands)
    and ``aggregator.onnx`` to ``out_dir`` (and ``patch_encoder.int8.onnx`` if ``precisions`` holds int8)."""
    out = ensure_writable_dir(out_dir)  # fail fast, before the (slow) model load
    log.info("loading %s ...", source)
    model, description = model_from_source(source)
    log.info("model: %s; feature dim %s", description, model.feature_dim)
    graphs = onnx_from_torch(model, out, opset=opset)
    fre = ", FRE Linear layers FP16" if fre_fp16 else ""
    softmax = "FP32 Softmax islands" if fp32_softmax else "FP16 attention"
    log.info("building mixed-precision patch encoder (route %s%s, %s) ...", fp16_route, fre, softmax)
    fp16 = patch_encoder_fp16(model, graphs.patch_encoder, fp16_route, fre_fp16=fre_fp16, fp32_softmax=fp32_softmax)
    int8 = patch_encoder_int8(graphs.patch_encoder) if "int8" in precisions else None
    for path in (graphs.patch_encoder, fp16, int8, graphs.aggregator):
        if path is not None:
            log.info("wrote %s (%.1f MiB)", path, path.stat().st_size / 2**20)
    sha = sha256_file(source) if Path(source).is_file() else ""
    art = OnnxArtifacts(model, description, graphs, fp16, fre_fp16, int8, sha, fp32_softmax=fp32_softmax)
    for verdict in trt_verdicts_from_onnx(art):
        log.info("TensorRT rules: %s", verdict.summary())
    return art


def trt_verdicts_from_onnx(art: OnnxArtifacts, paths: Sequence[Path] | None = None) -> list[TrtVerdict]:
    """The TensorRT parser rules' verdict on ``paths`` (default: every graph an engine can be built from: both
    encoders, ``--fp32`` building the fp32 one, and the aggregator), each checked once per export. The int8 graph
    is ONNX Runtime's, never TensorRT's, so it is not among them."""
    paths = paths or [art.graphs.patch_encoder, art.patch_encoder_fp16, art.graphs.aggregator]
    for path in paths:
        if str(path) not in art.trt_verdicts:
            art.trt_verdicts[str(path)] = check_graph(path)
    return [art.trt_verdicts[str(path)] for path in paths]


def trt_report_from_verdicts(art: OnnxArtifacts, verdicts: Sequence[TrtVerdict]) -> tuple[dict[str, Any], list[str]]:
    """The "TensorRT compatibility" entry of ``export_report.json`` and its Markdown section."""
    notes = ["checked on CPU before any engine build (export/trt_rules.py); TensorRT never builds "
             "patch_encoder.int8.onnx (ONNX Runtime's CPU graph), so it is not checked"]
    if art.patch_encoder_int8 is not None:
        notes.append(f"{art.patch_encoder_int8.name}: not built by TensorRT, not checked")
    notes.append(f"fused-attention is a performance rule (never a refusal); {attention_form(art)}")
    entry = {"graphs": [v.to_dict() for v in verdicts], "notes": notes,
             "fp16_attention": {"softmax": "fp32" if art.fp32_softmax else "fp16", "fp32_softmax": art.fp32_softmax}}
    return {"tensorrt_compatibility": entry}, verdicts_markdown(verdicts, notes)


def attention_form(art: OnnxArtifacts) -> str:
    """Which attention form ``patch_encoder.fp16.onnx`` was built in, for the export report."""
    if art.fp32_softmax:
        return (f"{art.patch_encoder_fp16.name} was built with --fp32-softmax: Cast -> FP32 Softmax -> Cast in "
                "each attention block, which TensorRT does not fuse")
    return (f"{art.patch_encoder_fp16.name} keeps attention FP16 (MatMul -> Softmax -> MatMul, no Cast), the form "
            "TensorRT fuses; --fp32-softmax restores FP32 Softmax islands")


def engine_profiles(feature_dim: int, *, min_batch: int | None = None, opt_batch: int | None = None,
                    max_batch: int | None = None, max_patches: int | None = None) -> Profiles:
    """The TensorRT optimisation profiles of both engines (None = the defaults of :mod:`spai.model.specs`)."""
    return {"patch_encoder": trt_profile(patch_encoder_spec(feature_dim), min_batch, opt_batch, max_batch),
            "aggregator": trt_profile(aggregator_spec(feature_dim), max_patches=max_patches)}


def parity_from_onnx(art: OnnxArtifacts, out_dir: str | os.PathLike, profiles: Profiles, *,
                     image_dir: str | os.PathLike | None = None, n_random: int = 256, gates: Gates | None = None,
                     engines: dict[str, Any] | None = None, extra: dict | None = None,
                     precisions: Sequence[str] = ()) -> ParityReport:
    """Compare PyTorch with ORT fp32, ORT fp16 (and TensorRT engines if given; the CPU routes torch bf16 / ORT
    int8 named in ``precisions``); write the report; raise :class:`spai.AccuracyError` if a gate fails (after the
    report is written). The ORT fp32/fp16 runners declare the engines' profile limits and minimums, so the check
    chunks and groups exactly as the engines will be fed (the encoder in chunks of ONNX Runtime's measured CPU chunk
    at most: the chunk changes neither features nor grouping, only memory); the CPU routes are checked as they run
    (their own chunk limits)."""
    paths, labels = load_images(image_dir) if image_dir else ([], None)
    enc_limits, agg_limits = max_shapes(profiles["patch_encoder"]), max_shapes(profiles["aggregator"])
    batch, *patch = enc_limits[PATCHES]
    enc_limits = {**enc_limits, PATCHES: (min(batch, CPU_CHUNKS[("ort", "fp32")]), *patch)}
    enc_min, agg_min = min_shapes(profiles["patch_encoder"]), min_shapes(profiles["aggregator"])
    routes = [Route(f"ort-{precision}", precision, OrtRunner(encoder, limits=enc_limits, minimums=enc_min),
                    OrtRunner(art.graphs.aggregator, limits=agg_limits, minimums=agg_min))
              for precision, encoder in (("fp32", art.graphs.patch_encoder), ("fp16", art.patch_encoder_fp16))]
    routes += cpu_routes_to_gate(art, precisions)
    verdicts = trt_verdicts_from_onnx(art)
    trt_entry, trt_section = trt_report_from_verdicts(art, verdicts)
    extra = {**(extra or {}), **precision_tables(art, precisions), **trt_entry}
    if engines:
        from export.trt import TrtRunner

        precision = "fp32" if engines.get("fp32") else "fp16"
        vc = bool(engines.get("version_compatible"))
        routes.append(Route(f"trt-{precision}", precision, TrtRunner(engines["patch_encoder"], version_compatible=vc),
                            TrtRunner(engines["aggregator"], version_compatible=vc)))
    with contextlib.ExitStack() as stack:
        entered = [stack.enter_context(route) for route in routes]
        report = compare_routes(art.model, entered, image_paths=paths, labels=labels, n_random=n_random,
                                gates=gates)
    log.info("wrote the CPU routes' verdicts to %s", route_evidence_from_report(art, report, out_dir))
    header = [f"Model: {art.source}", f"Random patches: {n_random}; images: {image_dir or 'none'}"]
    json_path, md_path = write_report(report, out_dir, header, extra, sections=trt_section)
    log.info("wrote %s and %s", json_path, md_path)
    if not engines:  # no TensorRT here (or --onnx-only): refuse graphs no engine could be built from, report kept
        enforce_trt_rules(verdicts)
    enforce(report)
    return report


def route_evidence_from_report(art: OnnxArtifacts, report: ParityReport, out_dir: str | os.PathLike) -> Path:
    """Keep the CPU routes' gate verdicts (ORT fp32, and ORT int8 / torch bf16 where gated) beside the graphs, for
    this checkpoint (its SHA-256 and its weights' fingerprint) on this CPU: what ``--precision auto`` reads."""
    evidence = evidence_for(art.model, out_dir)
    evidence.checkpoint_sha256 = art.checkpoint_sha256
    cpu_only = dataclasses.replace(report, backends={k: v for k, v in report.backends.items()
                                                     if tuple(k.split("-", 1)) in ROUTES})
    record_verdicts(evidence, cpu_only, cpu_identity(cpu_flags()))
    return evidence.save()


def cpu_routes_to_gate(art: OnnxArtifacts, precisions: Sequence[str]) -> list[Route]:
    """The reduced-precision CPU routes to gate: ``torch-bf16`` and ``ort-int8``, as :func:`runners_for` builds
    them for ``spai predict``."""
    routes = [runners_for("torch", "bf16", model=art.model)] if "bf16" in precisions else []
    if "int8" in precisions:
        if art.patch_encoder_int8 is None:
            raise ValueError("int8 parity needs the int8 graph: onnx_from_checkpoint(..., precisions=['int8'])")
        routes.append(runners_for("ort", "int8", onnx_dir=art.patch_encoder_int8.parent))
    return routes


def precision_tables(art: OnnxArtifacts, precisions: Sequence[str]) -> dict[str, Any]:
    """Which layers run in which precision, per reduced-precision CPU route (for ``export_report.json``)."""
    tables: dict[str, Any] = {}
    if "int8" in precisions and art.patch_encoder_int8 is not None:
        tables["ort-int8"] = precision_table_onnx(art.patch_encoder_int8)
    if "bf16" in precisions:
        import torch

        from spai.model.nn.precision import precision_table

        tables["torch-bf16"] = precision_table(art.model, torch.rand(1, 3, 224, 224))
    return {"precision_layers": tables} if tables else {}


def engines_from_onnx(art: OnnxArtifacts, out_dir: str | os.PathLike, profiles: Profiles, *,
                      timing_cache: str | os.PathLike | None = None, options: Any = None,
                      fp32: bool = False) -> dict[str, Any]:
    """``patch_encoder.plan`` (from the fp16 ONNX, or the fp32 one with ``fp32``), ``aggregator.plan`` and the
    ``engine.json`` manifest that records what built them (:mod:`export.manifest`). ``options``:
    :class:`export.trt.BuildOptions` (workspace, TF32, version compatibility, ...)."""
    enc_onnx = art.graphs.patch_encoder if fp32 else art.patch_encoder_fp16
    # TensorRT's parser rules, checked before TensorRT is even imported: a refusal names the node and the fix
    enforce_trt_rules(trt_verdicts_from_onnx(art, [enc_onnx, art.graphs.aggregator]))
    from export.trt import BuildOptions, engine_from_onnx

    options = options or BuildOptions()
    out = Path(out_dir)
    log.info("building TensorRT patch encoder from %s (profile %s) ...", enc_onnx.name, profiles["patch_encoder"])
    enc = engine_from_onnx(enc_onnx, out / PLAN_FILES["patch_encoder"], profiles["patch_encoder"],
                           timing_cache=timing_cache, options=options)
    log.info("building TensorRT aggregator (FP32) ...")
    agg = engine_from_onnx(art.graphs.aggregator, out / PLAN_FILES["aggregator"], profiles["aggregator"],
                           timing_cache=timing_cache, options=dataclasses.replace(options, tf32=False))
    sources = {"patch_encoder": enc_onnx, "aggregator": art.graphs.aggregator}
    manifest = manifest_for_engines(art, out, profiles, sources, "fp32" if fp32 else "fp16", options)
    for path in (enc, agg, manifest):
        log.info("wrote %s", path)
    return {"patch_encoder": enc, "aggregator": agg, "fp32": fp32, "manifest": manifest,
            "version_compatible": options.version_compatible}


def manifest_for_engines(art: OnnxArtifacts, out_dir: Path, profiles: Profiles, sources: dict[str, Path],
                         encoder_precision: str, options: Any) -> Path:
    """Write ``engine.json`` for plans just built here: this TensorRT, this GPU, the profiles, the ONNX hashes and
    the engines' outputs (those of their ONNX graphs: the Triton image reads them, having no ``onnx``)."""
    import datetime

    import torch

    from export.manifest import manifest_from_profiles, outputs_from_onnx, write_manifest
    from export.trt import tensorrt_version
    from spai.files import sha256_file

    major, minor = torch.cuda.get_device_capability()
    manifest = manifest_from_profiles(
        profiles, art.graphs.feature_dim, {"patch_encoder": encoder_precision, "aggregator": "fp32"},
        outputs=outputs_from_onnx(sources), tensorrt_version=tensorrt_version(), gpu=torch.cuda.get_device_name(),
        compute_capability=f"{major}.{minor}", cuda_version=str(torch.version.cuda),
        version_compatible=options.version_compatible,
        onnx_sha256={p.name: sha256_file(p) for p in sources.values()}, source=art.source,
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        extra={"tf32": options.tf32, "fre_fp16": art.fre_fp16,
               "fp32_softmax": art.fp32_softmax and encoder_precision == "fp16"})
    return write_manifest(out_dir, manifest)
