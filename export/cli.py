"""The export command, shared by ``spai export`` and ``python export/to_trt.py``: its arguments and its one
function (checkpoint -> ONNX -> parity report -> TensorRT engines). Light: heavy imports happen in :func:`run`.

Exit codes: 0 ok (also with --onnx-only), 1 user error (nothing half-written), 3 parity gates failed,
4 TensorRT or a GPU unavailable (the ONNX files and the ORT parity report were written).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from spai.errors import AccuracyError

if TYPE_CHECKING:
    from export.pipeline import OnnxArtifacts, Profiles
    from export.trt import BuildOptions

EXIT_TRT_UNAVAILABLE = 4

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """CKPT, the output directory, the parity-check options and the TensorRT build options."""
    parser.add_argument("checkpoint", help="checkpoint file or named config (e.g. spai-tiny: random weights)")
    parser.add_argument("-o", "--output", default="export_out", help="output directory (default: export_out)")
    parser.add_argument("--check-images", metavar="DIR", help="also check these images (samples.csv = labels)")
    parser.add_argument("--check-patches", type=int, default=256, help="random patches for the parity check")
    parser.add_argument("--fp16-route", choices=("convert", "torch"), default="convert")
    parser.add_argument("--fre-fp16", action="store_true",
                        help="also run the FRE's Linear layers in FP16 (about half the FLOPs of spai-fusion-b16); "
                             "cosine similarities, moments, LayerNorm and Softmax stay FP32; parity-gated")
    parser.add_argument("--fp32-softmax", action="store_true",
                        help="compute the backbone's attention Softmax in FP32 islands (Cast -> Softmax -> Cast), as "
                             "before; default: attention stays FP16, the form TensorRT fuses into one kernel")
    parser.add_argument("--min-batch", type=int, help="patch-encoder profile: fewest patches per call")
    parser.add_argument("--opt-batch", type=int, help="patch-encoder profile: batch the tactics are tuned for")
    parser.add_argument("--max-batch", type=int, help="patch-encoder profile: most patches per call")
    parser.add_argument("--max-patches", type=int, help="aggregator profile: most patches per image")
    parser.add_argument("--timing-cache", metavar="FILE", help="TensorRT timing cache to load and update")
    parser.add_argument("--workspace", type=int, metavar="MB", help="TensorRT workspace limit")
    parser.add_argument("--fp32", action="store_true", help="build an FP32 (TF32 off) encoder engine")
    trt = parser.add_argument_group("TensorRT engines")
    trt.add_argument("--tf32", action="store_true",
                     help="let TensorRT use TF32 for the encoder's FP32 layers (default: off, they run in FP32)")
    trt.add_argument("--version-compatible", action="store_true",
                     help="build version-compatible engines (later TensorRT runtimes load them; Triton needs "
                          "--backend-config=tensorrt,version-compatible=true; can be slower)")
    trt.add_argument("--builder-optimization-level", type=int, choices=range(6), metavar="0-5",
                     help="TensorRT builder optimisation level (default 3: TensorRT's)")
    trt.add_argument("--detailed-profiling", action="store_true",
                     help="ProfilingVerbosity.DETAILED: keep per-layer kernel names for the engine inspector")
    parser.add_argument("--onnx-only", action="store_true", help="stop after ONNX and the ORT parity report")
    parser.add_argument("--precision", action="append", choices=("int8", "bf16"), default=[],
                        help="also gate a reduced-precision CPU route (repeatable): int8 writes "
                             "patch_encoder.int8.onnx (ONNX Runtime), bf16 checks the torch bf16 route")


def run(args: argparse.Namespace) -> int:
    """checkpoint -> ONNX -> (TensorRT engines) -> parity report (printed: the command's output); returns the exit
    code. Progress goes to the ``export`` loggers."""
    from export import pipeline
    from export.trt import tensorrt_available

    precisions = tuple(args.precision)
    art = pipeline.onnx_from_checkpoint(args.checkpoint, args.output, fp16_route=args.fp16_route,
                                        fre_fp16=args.fre_fp16, precisions=precisions,
                                        fp32_softmax=args.fp32_softmax)
    profiles = pipeline.engine_profiles(art.graphs.feature_dim, min_batch=args.min_batch, opt_batch=args.opt_batch,
                                        max_batch=args.max_batch, max_patches=args.max_patches)
    if args.onnx_only or not tensorrt_available():
        parity(args, art, profiles)
        if args.onnx_only:
            return 0
        log.warning("TensorRT (the `tensorrt` package and a CUDA GPU) is unavailable here: ONNX files and the ORT "
                    "parity report are in %s; run again on a GPU machine to build the engines (exit code %d).",
                    args.output, EXIT_TRT_UNAVAILABLE)
        return EXIT_TRT_UNAVAILABLE
    engines = pipeline.engines_from_onnx(art, args.output, profiles, timing_cache=args.timing_cache,
                                         options=build_options(args), fp32=args.fp32)
    parity(args, art, profiles, engines)
    return 0


def parity(args: argparse.Namespace, art: OnnxArtifacts, profiles: Profiles, engines: dict | None = None) -> None:
    """Gate the graphs (and ``engines``) and print the parity report on stdout, whether the gates passed or not
    (:func:`export.pipeline.parity_from_onnx` raises :class:`AccuracyError` only once the report is written)."""
    from export import pipeline
    from export.compare import REPORT_MD

    report = Path(args.output) / REPORT_MD
    try:
        pipeline.parity_from_onnx(art, args.output, profiles, image_dir=args.check_images,
                                  n_random=args.check_patches, engines=engines, precisions=tuple(args.precision))
    except AccuracyError:  # a gate failed: the report says which
        print(report.read_text(), flush=True)
        raise
    print(report.read_text(), flush=True)


def build_options(args: argparse.Namespace) -> BuildOptions:
    """The TensorRT builder options the command line asked for."""
    from export.trt import BuildOptions

    return BuildOptions(workspace_mb=args.workspace, tf32=args.tf32, version_compatible=args.version_compatible,
                        optimization_level=args.builder_optimization_level,
                        detailed_profiling=args.detailed_profiling)
