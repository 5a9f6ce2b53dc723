"""``spai predict``: score images in-process (no server), print a table, optionally write the scores file.

A corpus streams (:mod:`spai_cli.streaming`): inputs listed lazily, read and decoded ahead on worker threads at
most ``--window`` at a time, scored one by one, each row written as it finishes (CSV or Parquet, ``--resume``);
``--engine ray`` scores the same way on a Ray Data pipeline (:mod:`spai.corpus.ray_scoring`, the ``ray`` extra).

The route is picked by name (``--backend torch|ort``, ``--precision fp32|bf16|int8|auto``,
:mod:`spai.infer.routes`; ``auto``: the fastest route that passed its parity gate for this checkpoint on this CPU), and
every route scores through :class:`spai.infer.scorer.Scorer` over the runners of :func:`spai.infer.routes.runners_for`;
``latency_ms`` in the CSV is each image's scoring time."""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from spai.corpus.inputs import InputRef, score_inputs
from spai.corpus.writers import ScoreWriter
from spai.errors import SPAIError
from spai.infer.images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS
from spai.infer.prepare import InputLimits
from spai.infer.routes import resolve_route
from spai.infer.scorer import Scorer
from spai.infer.scores import ImageScore
from spai.model.calibration import Calibration, calibration_from_export
from spai.model.patching import PatchSpec, patch_spec_from_config
from spai_cli.routes import (
    add_route_arguments,
    cached_export,
    check_gpu_route,
    chosen_route,
    gpu_route,
    route_runners,
    torch_device,
)
from spai_cli.streaming import (
    TABLE_ROWS,
    RunTally,
    add_corpus_arguments,
    check_sources,
    pending_inputs,
    scores_output,
    write_all,
)

if TYPE_CHECKING:
    from spai.corpus.ray_scoring import ActorPlan
    from spai.model.nn.spai_model import SPAIModel


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="score images in-process (PyTorch or ONNX Runtime, fp32/bf16/int8)")
    add_corpus_arguments(p)
    p.add_argument("--model", default="spai-fusion-b16", help="named config (random weights) ...")
    p.add_argument("--checkpoint", help="checkpoint file (ours, upstream spai.pth, fork ckpt_epoch_N.pth)")
    p.add_argument("--operating-point", metavar="NAME",
                   help="decide at this operating point of a calibrated checkpoint (default: its default, e.g. "
                        "fpr0.01; an uncalibrated model decides at p0.5)")
    add_route_arguments(p)
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help=f"refuse larger images (decompression-bomb guard; default {DEFAULT_MAX_PIXELS})")
    p.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_BYTES,
                   help=f"refuse larger files (default {DEFAULT_MAX_BYTES})")
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                   help="threads reading and decoding images ahead of the scorer")
    p.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="local: this process; ray: a Ray Data pipeline of scorer actors (the `ray` extra)")
    p.add_argument("--address", help="--engine ray: the Ray cluster to join (default: start one on this machine)")
    p.add_argument("--actors", type=int, help="--engine ray: scorer actors (default: one per GPU, else one per node)")
    p.add_argument("--device", choices=("cpu", "cuda"),
                   help="cpu (default), or cuda: the torch routes on this machine's GPU (fp32; fp16 / bf16 under "
                        "autocast where they pass their parity gate); --engine ray: actors take a GPU each where "
                        "the cluster has GPUs unless --device cpu")
    p.set_defaults(func=run)


@contextlib.contextmanager
def predict_scorer(args: argparse.Namespace) -> Iterator[Scorer]:
    """A :class:`spai.infer.scorer.Scorer` over the entered route ``--backend`` / ``--precision`` / ``--device`` ask
    for (:func:`spai_cli.routes.route_runners`), with the model's patch spec, its calibration (the checkpoint's, or
    the ``--onnx`` export's calibration.json) and the ``--max-pixels`` / ``--max-bytes`` limits."""
    device = torch_device(args)
    model, spec, calibration = scoring_model(args, device)
    if device == "cpu":
        backend, precision, onnx_dir = chosen_route(args, model)
    else:
        (backend, precision), onnx_dir = gpu_route(args, model), None
    limits = InputLimits(max_bytes=args.max_bytes, max_pixels=args.max_pixels)
    with route_runners(model, backend, precision, onnx_dir, args.chunk_size) as route:
        model = None  # an ORT route holds the graphs only: the torch weights can go
        yield Scorer.for_route(route, limits=limits, spec=spec, calibration=calibration)


def scoring_model(args: argparse.Namespace, device: str = "cpu"
                  ) -> tuple[SPAIModel | None, PatchSpec, Calibration]:
    """The model ``--checkpoint`` / ``--model`` name on ``device`` (None for an ORT route over an ``--onnx``
    export, which needs the graphs only), its patch spec and its calibration, whose ``--operating-point`` is
    checked here, before any export or scoring."""
    import spai
    from spai.model.config import get_config

    explicit = "torch" if device != "cpu" or args.precision == "fp16" else \
        None if args.precision == "auto" else resolve_route(args.backend, args.precision)[0]
    needs_model = explicit in (None, "torch") or not args.onnx or args.checkpoint or device != "cpu"
    model = spai.create_model(None if args.checkpoint else args.model, checkpoint=args.checkpoint, device=device) \
        if needs_model else None
    spec = model.patch_spec if model is not None else patch_spec_from_config(get_config(args.model))
    calibration = model.calibration if model is not None else calibration_from_export(args.onnx)
    calibration.operating_point(args.operating_point)  # an unknown operating point fails before any export
    return model, spec, calibration


def ray_actor_args(args: argparse.Namespace, plan: ActorPlan) -> argparse.Namespace:
    """``spai predict``'s arguments as every Ray actor scores with them, checked and fixed once on the driver: a
    bad checkpoint or operating point fails here, before any actor starts; the route is chosen once (``auto``:
    by this machine's evidence); an ORT route without ``--onnx`` is exported once, into the cache (cluster
    workers must see that path, as they must see the checkpoint's); actors with a GPU run the torch route asked for
    on it (fp16 / bf16 where they pass their parity gate on that GPU, checked by each actor)."""
    fixed = copy.copy(args)
    if plan.num_gpus:
        check_gpu_route(args)
        checked = copy.copy(args)
        checked.backend, checked.precision = "torch", "fp32"
        scoring_model(checked)  # the checkpoint and the operating point, checked on the driver's CPU
        fixed.backend, fixed.device = "torch", "cuda"
        return fixed
    model, _, _ = scoring_model(args)
    fixed.backend, fixed.precision, fixed.onnx = chosen_route(args, model)
    if fixed.backend == "ort" and not fixed.onnx:
        fixed.onnx = cached_export(model)
    fixed.device = "cpu"
    return fixed


def print_table(rows: Sequence[ImageScore]) -> None:
    """Image, patches, probability, decision, milliseconds: one line per image."""
    print(f"{'image':<44} {'patches':>7} {'prob':>7} {'decision':>9} {'ms':>9}")
    for r in rows:
        prob = "error" if r.error else f"{r.probability:.4f}"
        decision = "" if r.decision is None else ("AI-gen" if r.decision else "real")
        print(f"{printable(Path(r.image).name)[:44]:<44} {r.num_patches:>7} {prob:>7} {decision:>9} "
              f"{r.latency_ms:>9.1f}" + (f"  {printable(r.error)}" if r.error else ""))


def describe_point(calibration: Calibration, name: str | None = None) -> str:
    """What a decision at operating point ``name`` means, in one line."""
    point = calibration.operating_point(name)
    if not calibration.calibrated:
        return (f"operating point {point.name}: uncalibrated, probability = sigmoid(logit) >= {point.threshold}; "
                "`spai calibrate` sets thresholds at a chosen false-positive rate")
    return (f"operating point {point.name}: calibrated probability ({calibration.method}) >= {point.threshold:.6g}"
            f"; others: {', '.join(p.name for p in calibration.operating_points if p.name != point.name) or 'none'}")


def printable(text: str) -> str:
    """A non-UTF-8 file name (surrogate-escaped by the OS layer) shown with replacement characters."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def run(args: argparse.Namespace) -> int:
    check_sources(args.inputs)
    with scores_output(args) as writer:
        refs, done = pending_inputs(args)
        if args.engine == "ray":
            return run_ray(args, refs, writer)
        with predict_scorer(args) as scorer:
            tally = write_all(score_inputs(scorer, refs, args.operating_point, args.window, args.workers), writer,
                              args, done)
    print_summary(tally, scorer.calibration, args, len(done))
    return 0


def run_ray(args: argparse.Namespace, refs: Iterator[InputRef], writer: ScoreWriter | None) -> int:
    """``--engine ray``: the same scoring on a Ray Data pipeline; its rows go to ``-o`` (required)."""
    if writer is None:
        raise SPAIError("--engine ray writes its scores to a file: pass -o scores.parquet (or .csv).")
    try:
        from spai.corpus.ray_scoring import predict_with_ray  # the one in-function import: Ray is an optional extra
    except ImportError as e:
        raise SPAIError(f"--engine ray needs Ray ({e}); install the `ray` extra: pip install "
                        "'spai-deploy[ray]'.") from e
    written = predict_with_ray(args, refs, writer, scorer_factory=predict_scorer, actor_args=ray_actor_args)
    print(f"scored {written} images with Ray -> {args.output}")
    return 0


def print_summary(tally: RunTally, calibration: Calibration, args: argparse.Namespace, already: int) -> None:
    """The table (first rows only), where the scores went, the flagged count; an error when nothing scored."""
    print_table(tally.first)
    if tally.scored > len(tally.first):
        print(f"... and {tally.scored - len(tally.first)} more (the first {TABLE_ROWS} shown)")
    if args.output:
        print(f"wrote {tally.scored} rows to {args.output}" + (f" ({already} already there)" if already else ""))
    print(f"{tally.flagged.summary()}\n{describe_point(calibration, args.operating_point)}")
    if tally.scored and tally.failed == tally.scored:
        raise SPAIError("no image could be scored (see the errors above).")
