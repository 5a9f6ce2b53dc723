"""``spai repository --artifacts DIR --variant trt|onnx|python-ort [--precision fp32|int8|auto] -o REPO``: a Triton
model repository from an export directory (python-ort: the encoder graph of the route that passed, by the export's
route evidence); ``spai repository --variant python-torch --checkpoint CKPT [--device gpu --precision fp16] -o
REPO``: one that runs the checkpoint itself in PyTorch; ``--checked-in`` rewrites the production layout in
serving/triton_models/. Instance counts, BLS calls in flight, batching and threads default to the variant's
(serving.repository.default_tuning)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)

TUNING_FLAGS = {  # flag -> (Tuning field, help)
    "--entry-instances": ("entry_instances", "instances of the `spai` model (each decodes and cuts on one core)"),
    "--encoder-instances": ("encoder_instances", "instances of spai_patch_encoder"),
    "--aggregator-instances": ("aggregator_instances", "instances of spai_aggregator"),
    "--in-flight": ("in_flight", "K: encoder requests one `spai` execute keeps pending (BLS async_exec)"),
    "--entry-max-batch": ("entry_max_batch", "requests one `spai` execute decodes together (its max_batch_size; "
                                             "bounds each instance's memory)"),
    "--entry-queue-delay-us": ("entry_queue_delay_us", "dynamic batcher delay of `spai` (microseconds)"),
    "--encoder-queue-delay-us": ("encoder_queue_delay_us", "dynamic batcher delay of the encoder"),
    "--aggregator-queue-delay-us": ("aggregator_queue_delay_us", "dynamic batcher delay of the aggregator"),
    "--entry-threads": ("entry_threads", "OpenMP/BLAS threads of each `spai` instance"),
    "--encoder-threads": ("encoder_threads", "ONNX Runtime / PyTorch + OpenMP threads of each python-ort / "
                                             "python-torch CPU encoder instance (0: the cores shared among its "
                                             "instances)"),
    "--aggregator-threads": ("aggregator_threads", "the same for the aggregator"),
}


def register(sub: argparse._SubParsersAction) -> None:
    from serving.repository import ALL_VARIANTS, DEVICES, VARIANT_PRECISIONS

    p = sub.add_parser("repository", help="build a Triton model repository from an export directory (or, "
                                          "python-torch, from a checkpoint)")
    p.add_argument("--artifacts", help="export directory (patch_encoder/aggregator .onnx, .plan)")
    p.add_argument("--variant", choices=ALL_VARIANTS, default="python-ort",
                   help="trt: TensorRT plans (GPU); onnx: onnxruntime backend; python-ort: Python backend + ONNX "
                        "Runtime; python-torch: Python backend + PyTorch on the checkpoint, no export (the "
                        "nvidia-pytriton server loads these two)")
    p.add_argument("--checkpoint", help="python-torch: the checkpoint to serve (copied into the repository)")
    p.add_argument("--device", choices=DEVICES,
                   help="python-torch: gpu = KIND_GPU graph models, cpu = KIND_CPU (default: cpu)")
    p.add_argument("--precision", choices=sorted({p for ps in VARIANT_PRECISIONS.values() for p in ps}),
                   help="python-ort: the encoder graph, fp32 (default), int8 (only where `spai export --precision "
                        "int8` gated it on this CPU and it passed) or auto (int8 where it passed and is faster "
                        "here, else fp32); python-torch: fp16 / bf16 = torch.autocast on the GPU (default: fp16 "
                        "with --device gpu, fp32 on the cpu, the only precision there); trt, onnx: the export's")
    p.add_argument("-o", "--output", help="repository directory to write")
    p.add_argument("--feature-dim", type=int, help="D (default: read from aggregator.onnx)")
    p.add_argument("--tensorrt-version", metavar="X.Y.Z",
                   help="trt: the serving container's TensorRT; plans built by another TensorRT are refused "
                        "(default: the TensorRT of this machine / container where it can be read)")
    p.add_argument("--checked-in", action="store_true", help="rewrite the configs in serving/triton_models/")
    tuning = p.add_argument_group("throughput (defaults: the variant's, docs/serving.md)")
    for flag, (_, text) in TUNING_FLAGS.items():
        tuning.add_argument(flag, type=int, help=text)
    tuning.add_argument("--encoder-preferred-batch", type=_sizes, metavar="N[,N...]",
                        help="the encoder's preferred_batch_size ('' for none)")
    p.set_defaults(func=run)


def _sizes(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of batch sizes") from e


def run(args: argparse.Namespace) -> int:
    from serving.repository import (
        CHECKED_IN,
        SERVER_ARGS_FILE,
        TORCH_VARIANT,
        VARIANT_PRECISIONS,
        build_repository,
        production_options,
        tuning_with,
        write_configs,
    )
    from spai.errors import ServingError

    changes = {field: getattr(args, flag[2:].replace("-", "_")) for flag, (field, _) in TUNING_FLAGS.items()}
    changes["encoder_preferred_batch"] = args.encoder_preferred_batch
    if args.checked_in:
        if any(v is not None for v in changes.values()):
            raise ServingError("--checked-in writes the production defaults; drop the throughput flags, or build "
                               "a repository of your own with --artifacts and -o.")
        print(write_configs(CHECKED_IN, production_options()))
        return 0
    if args.precision is not None and args.precision not in VARIANT_PRECISIONS[args.variant]:
        allowed = VARIANT_PRECISIONS[args.variant]
        raise ServingError(f"--variant {args.variant} takes " + (
            f"--precision {' | '.join(allowed)}, not {args.precision}." if allowed else
            "no --precision: its engines' precision is the one `spai export` built (engine.json)."))
    if args.variant == TORCH_VARIANT:
        root = _torch_repository(args, changes)
    else:
        if args.checkpoint or args.device:
            raise ServingError(f"--checkpoint and --device are for --variant {TORCH_VARIANT}; "
                               f"--variant {args.variant} is built from an export directory (--artifacts).")
        if not args.artifacts or not args.output:
            raise ServingError("--artifacts and -o/--output are required (or --checked-in).")
        root = build_repository(args.artifacts, args.variant, args.output, feature_dim=args.feature_dim,
                                tensorrt_version=args.tensorrt_version, precision=args.precision or "fp32",
                                tuning=tuning_with(args.variant, **changes))
    print(root)
    args_file = root / SERVER_ARGS_FILE
    if args_file.is_file():
        print(f"serve with: tritonserver --model-repository={root} {' '.join(args_file.read_text().split())} "
              "(serving/deploy/tritonserver.py reads them from " + SERVER_ARGS_FILE + ")")
    return 0


def _torch_repository(args: argparse.Namespace, changes: dict[str, object]) -> Path:
    """The python-torch repository of ``args.checkpoint`` (the export-only flags are refused)."""
    from serving.repository import TORCH_VARIANT, build_torch_repository, tuning_with
    from spai.errors import ServingError

    if args.artifacts or args.feature_dim or args.tensorrt_version:
        raise ServingError(f"--variant {TORCH_VARIANT} runs the checkpoint itself: pass --checkpoint CKPT instead "
                           "of --artifacts (D comes from the model; no --feature-dim or --tensorrt-version).")
    if not args.checkpoint or not args.output:
        raise ServingError(f"--variant {TORCH_VARIANT} needs --checkpoint CKPT and -o/--output REPO.")
    device = args.device or "cpu"
    precision = args.precision or ("fp16" if device == "gpu" else "fp32")
    return build_torch_repository(args.checkpoint, args.output, device, precision,
                                  tuning=tuning_with(TORCH_VARIANT, device, **changes))
