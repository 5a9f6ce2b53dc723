"""Assemble a Triton model repository from export outputs.

    python -m serving.build_repository --artifacts EXPORT_DIR --variant trt|onnx|python-ort -o REPO
    python -m serving.build_repository --checked-in   # regenerate serving/triton_models/ configs
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: put the repo root (not serving/) first on sys.path
    sys.path[:] = [str(Path(__file__).resolve().parent.parent)] + [
        p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from serving.repository import CHECKED_IN, VARIANTS, build_repository, production_options, write_configs
from spai.errors import SPAIError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifacts", help="export directory (patch_encoder.onnx/.plan, aggregator.onnx/.plan)")
    p.add_argument("--variant", choices=VARIANTS, default="python-ort",
                   help="trt: TensorRT plans (GPU); onnx: onnxruntime backend; python-ort: Python backend + ONNX "
                        "Runtime (the only one the nvidia-pytriton server loads)")
    p.add_argument("-o", "--output", help="repository directory to write")
    p.add_argument("--feature-dim", type=int, help="D (default: read from aggregator.onnx)")
    p.add_argument("--checked-in", action="store_true", help="rewrite the configs in serving/triton_models/")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.checked_in:
            print(write_configs(CHECKED_IN, production_options()))
            return 0
        if not args.artifacts or not args.output:
            raise SPAIError("--artifacts and -o/--output are required (or --checked-in).")
        print(build_repository(args.artifacts, args.variant, args.output, feature_dim=args.feature_dim))
        return 0
    except SPAIError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
