"""Checkpoint -> ONNX (fp32 + fp16) -> parity report -> TensorRT engines: the steps the CLIs chain."""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from export.compare import Gates, ParityReport, compare_backends, enforce, load_images, write_report
from export.fp16 import patch_encoder_fp16
from export.onnx import OnnxExport, ensure_writable_dir, model_from_source, onnx_from_torch
from spai.runners import OrtRunner
from spai.specs import Shape, aggregator_spec, max_shapes, patch_encoder_spec, trt_profile

Profiles = dict[str, dict[str, tuple[Shape, Shape, Shape]]]  # graph -> input -> (min, opt, max)


def log(msg: str) -> None:
    """Progress line with a timestamp (stdout, flushed)."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


@dataclass
class OnnxArtifacts:
    """What :func:`onnx_from_checkpoint` produced."""

    model: Any
    source: str
    graphs: OnnxExport
    patch_encoder_fp16: Path


def onnx_from_checkpoint(source: str | os.PathLike, out_dir: str | os.PathLike, *, fp16_route: str = "convert",
                         opset: int | None = None) -> OnnxArtifacts:
    """Load a checkpoint / named config and write ``patch_encoder.onnx``, ``patch_encoder.fp16.onnx`` and
    ``aggregator.onnx`` to ``out_dir``."""
    out = ensure_writable_dir(out_dir)  # fail fast, before the (slow) model load
    log(f"loading {source} ...")
    model, description = model_from_source(source)
    log(f"model: {description}; feature dim {model.feature_dim}")
    graphs = onnx_from_torch(model, out, opset=opset, progress=log)
    log(f"building mixed-precision patch encoder (route {fp16_route}) ...")
    fp16 = patch_encoder_fp16(model, graphs.patch_encoder, fp16_route)
    for path in (graphs.patch_encoder, fp16, graphs.aggregator):
        log(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    return OnnxArtifacts(model, description, graphs, fp16)


def engine_profiles(feature_dim: int, *, min_batch: int | None = None, opt_batch: int | None = None,
                    max_batch: int | None = None, max_patches: int | None = None) -> Profiles:
    """The TensorRT optimisation profiles of both engines (None = the defaults of :mod:`spai.specs`)."""
    return {"patch_encoder": trt_profile(patch_encoder_spec(feature_dim), min_batch, opt_batch, max_batch),
            "aggregator": trt_profile(aggregator_spec(feature_dim), max_patches=max_patches)}


def parity_from_onnx(art: OnnxArtifacts, out_dir: str | os.PathLike, profiles: Profiles, *,
                     image_dir: str | os.PathLike | None = None, n_random: int = 256, gates: Gates | None = None,
                     engines: dict[str, Any] | None = None, extra: dict | None = None) -> ParityReport:
    """Compare PyTorch with ORT fp32, ORT fp16 (and TensorRT engines if given); write the report; raise
    :class:`spai.AccuracyError` if a gate fails. The ORT runners declare the engines' profile limits, so the
    check chunks and groups exactly as the engines will be fed."""
    paths, labels = load_images(image_dir) if image_dir else ([], None)
    enc_limits, agg_limits = max_shapes(profiles["patch_encoder"]), max_shapes(profiles["aggregator"])
    runners = {"ort-fp32": (OrtRunner(art.graphs.patch_encoder, limits=enc_limits),
                            OrtRunner(art.graphs.aggregator, limits=agg_limits), "fp32"),
               "ort-fp16": (OrtRunner(art.patch_encoder_fp16, limits=enc_limits),
                            OrtRunner(art.graphs.aggregator, limits=agg_limits), "fp16")}
    if engines:
        from export.trt import TrtRunner

        precision = "fp32" if engines.get("fp32") else "fp16"
        runners[f"trt-{precision}"] = (TrtRunner(engines["patch_encoder"]), TrtRunner(engines["aggregator"]),
                                       precision)
    with contextlib.ExitStack() as stack:
        entered = {name: ((stack.enter_context(enc), stack.enter_context(agg)), precision)
                   for name, (enc, agg, precision) in runners.items()}
        report = compare_backends(art.model, entered, image_paths=paths, labels=labels, n_random=n_random,
                                  gates=gates, progress=log)
    header = [f"Model: {art.source}", f"Random patches: {n_random}; images: {image_dir or 'none'}"]
    json_path, md_path = write_report(report, out_dir, header, extra)
    print(md_path.read_text(), flush=True)
    log(f"wrote {json_path} and {md_path}")
    enforce(report)
    return report


def engines_from_onnx(art: OnnxArtifacts, out_dir: str | os.PathLike, profiles: Profiles, *,
                      timing_cache: str | os.PathLike | None = None, workspace_mb: int | None = None,
                      fp32: bool = False) -> dict[str, Any]:
    """``patch_encoder.plan`` (from the fp16 ONNX, or the fp32 one with ``fp32``) and ``aggregator.plan``."""
    from export.trt import engine_from_onnx

    out = Path(out_dir)
    enc_onnx = art.graphs.patch_encoder if fp32 else art.patch_encoder_fp16
    log(f"building TensorRT patch encoder from {enc_onnx.name} (profile {profiles['patch_encoder']}) ...")
    enc = engine_from_onnx(enc_onnx, out / "patch_encoder.plan", profiles["patch_encoder"],
                           timing_cache=timing_cache, workspace_mb=workspace_mb, fp32=fp32)
    log("building TensorRT aggregator (FP32) ...")
    agg = engine_from_onnx(art.graphs.aggregator, out / "aggregator.plan", profiles["aggregator"],
                           timing_cache=timing_cache, workspace_mb=workspace_mb, fp32=True)
    for path in (enc, agg):
        log(f"wrote {path}")
    return {"patch_encoder": enc, "aggregator": agg, "fp32": fp32}
