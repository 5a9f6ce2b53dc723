"""``python export/to_trt.py CKPT [-o DIR]``: checkpoint -> ONNX -> parity report -> TensorRT engines.

CKPT is any checkpoint ``spai.create_model(checkpoint=...)`` reads, or a named config such as ``spai-tiny``
(random weights). Exit codes: 0 ok (also with --onnx-only), 1 user error (nothing half-written),
3 parity gates failed, 4 TensorRT or a GPU unavailable (ONNX files and the ORT parity report were written).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: put the repo root (not export/) first on sys.path
    _ROOT = str(Path(__file__).resolve().parent.parent)
    sys.path[:] = [_ROOT] + [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]


from export.cli_common import add_common_arguments, run_reporting_errors  # noqa: E402  (after the path fix)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--min-batch", type=int, help="patch-encoder profile: fewest patches per call")
    parser.add_argument("--opt-batch", type=int, help="patch-encoder profile: batch the tactics are tuned for")
    parser.add_argument("--max-batch", type=int, help="patch-encoder profile: most patches per call")
    parser.add_argument("--max-patches", type=int, help="aggregator profile: most patches per image")
    parser.add_argument("--timing-cache", metavar="FILE", help="TensorRT timing cache to load and update")
    parser.add_argument("--workspace", type=int, metavar="MB", help="TensorRT workspace limit")
    parser.add_argument("--fp32", action="store_true", help="build an FP32 (TF32 off) encoder engine")
    parser.add_argument("--onnx-only", action="store_true", help="stop after ONNX and the ORT parity report")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    args = build_parser().parse_args(argv)
    return run_reporting_errors(lambda: export_all(args))


def export_all(args: argparse.Namespace) -> int:
    """checkpoint -> ONNX -> (TensorRT engines) -> parity report; the exit code."""
    from export import pipeline
    from export.trt import tensorrt_available

    art = pipeline.onnx_from_checkpoint(args.checkpoint, args.output, fp16_route=args.fp16_route)
    if args.onnx_only or not tensorrt_available():
        pipeline.parity_from_onnx(art, args.output, image_dir=args.check_images, n_random=args.check_patches)
        if args.onnx_only:
            return 0
        print("TensorRT (the `tensorrt` package and a CUDA GPU) is unavailable here: ONNX files and the ORT "
              f"parity report are in {args.output}; run again on a GPU machine to build the engines "
              f"(exit code {pipeline.EXIT_TRT_UNAVAILABLE}).", file=sys.stderr)
        return pipeline.EXIT_TRT_UNAVAILABLE
    engines = pipeline.engines_from_onnx(art, args.output, min_batch=args.min_batch, opt_batch=args.opt_batch,
                                         max_batch=args.max_batch, max_patches=args.max_patches,
                                         timing_cache=args.timing_cache, workspace_mb=args.workspace,
                                         fp32=args.fp32)
    pipeline.parity_from_onnx(art, args.output, image_dir=args.check_images, n_random=args.check_patches,
                              engines=engines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
