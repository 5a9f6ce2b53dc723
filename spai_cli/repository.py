"""``spai repository --artifacts DIR --variant trt|onnx|python-ort -o REPO``: a Triton model repository from an
export directory; ``--checked-in`` rewrites the production layout in serving/triton_models/."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from serving.repository import VARIANTS

    p = sub.add_parser("repository", help="build a Triton model repository from an export directory")
    p.add_argument("--artifacts", help="export directory (patch_encoder/aggregator .onnx, .plan)")
    p.add_argument("--variant", choices=VARIANTS, default="python-ort",
                   help="trt: TensorRT plans (GPU); onnx: onnxruntime backend; python-ort: Python backend + ONNX "
                        "Runtime (the only one the nvidia-pytriton server loads)")
    p.add_argument("-o", "--output", help="repository directory to write")
    p.add_argument("--feature-dim", type=int, help="D (default: read from aggregator.onnx)")
    p.add_argument("--tensorrt-version", metavar="X.Y.Z",
                   help="trt: the serving container's TensorRT; plans built by another TensorRT are refused "
                        "(default: the TensorRT of this machine / container where it can be read)")
    p.add_argument("--checked-in", action="store_true", help="rewrite the configs in serving/triton_models/")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from serving.repository import (
        CHECKED_IN,
        SERVER_ARGS_FILE,
        build_repository,
        production_options,
        write_configs,
    )
    from spai.errors import ServingError

    if args.checked_in:
        print(write_configs(CHECKED_IN, production_options()))
        return 0
    if not args.artifacts or not args.output:
        raise ServingError("--artifacts and -o/--output are required (or --checked-in).")
    root = build_repository(args.artifacts, args.variant, args.output, feature_dim=args.feature_dim,
                            tensorrt_version=args.tensorrt_version)
    print(root)
    args_file = root / SERVER_ARGS_FILE
    if args_file.is_file():
        print(f"serve with: tritonserver --model-repository={root} {' '.join(args_file.read_text().split())} "
              "(serving/deploy/tritonserver.py reads them from " + SERVER_ARGS_FILE + ")")
    return 0
