"""``spai predict``: score images in-process (no server), print a table, optionally write the scores file.

A corpus streams (:mod:`spai_cli.streaming`): inputs listed lazily, read and decoded ahead on worker threads at
most ``--window`` at a time, scored one by one, each row written as it finishes (CSV or Parquet, ``--resume``);
``--engine ray`` scores the same way on a Ray Data pipeline (:mod:`spai.ray_scoring`, the ``ray`` extra).

The route is picked by name (``--backend torch|ort``, ``--precision fp32|bf16|int8|auto``,
:mod:`spai.routes`; ``auto``: the fastest route that passed its parity gate for this checkpoint on this CPU), and
every route scores through :class:`spai.inference.Scorer` over the runners of :func:`spai.routes.runners_for`;
``latency_ms`` in the CSV is each image's scoring time."""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from spai.corpus import InputRef, map_bounded, read_input
from spai.errors import ImageError, SPAIError
from spai.images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS
from spai.inference import (
    Calibration,
    InputLimits,
    PreparedImage,
    Scorer,
    calibration_from_export,
    prepare_image,
)
from spai.patching import patch_spec_from_config
from spai.routes import resolve_route
from spai.scores import ImageScore, ScoreWriter
from spai_cli.routes import add_route_arguments, chosen_route, route_runners
from spai_cli.streaming import (
    TABLE_ROWS,
    RunTally,
    add_corpus_arguments,
    check_sources,
    pending_inputs,
    scores_output,
    write_all,
)


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
    p.add_argument("--actors", type=int, help="--engine ray: scorer actors (default: from the cluster's CPUs/GPUs)")
    p.set_defaults(func=run)


def score_inputs(scorer: Scorer, refs: Iterable[InputRef], operating_point: str | None = None, window: int = 16,
                 workers: int = 2) -> Iterator[ImageScore]:
    """One score per input, in order, decided at ``operating_point`` (checked by :func:`predict_scorer`, before
    any export): ``workers`` threads read and decode at most ``window`` inputs ahead while the scorer scores one
    at a time (its scores do not depend on what else is in flight). Timed (read, decode and scoring); a bad image
    gets its error and never stops the others."""
    limits = scorer.input_limits()

    def prepare(ref: InputRef) -> tuple[PreparedImage, float]:
        start = time.perf_counter()
        return prepare_image(read_input(ref, limits), ref.key, limits, scorer.spec), time.perf_counter() - start

    for ref, future in map_bounded(prepare, refs, window, workers):
        start, took = time.perf_counter(), 0.0
        try:
            prepared, took = future.result()
            result = scorer.score_prepared([[prepared]], [operating_point])[0]
            if isinstance(result, SPAIError):
                raise result
            (row,) = result
        except ImageError as e:
            row = ImageScore(ref.key, error=str(e))
        row.latency_ms = (took + time.perf_counter() - start) * 1e3
        row.size_bytes, row.mtime = ref.size, ref.mtime
        yield row


def score_paths(scorer: Scorer, paths: Sequence[Path], operating_point: str | None = None) -> list[ImageScore]:
    """:func:`score_inputs` over a few local files, all at once."""
    return list(score_inputs(scorer, (InputRef(str(p)) for p in paths), operating_point, workers=1))


@contextlib.contextmanager
def predict_scorer(args: argparse.Namespace) -> Iterator[Scorer]:
    """A :class:`spai.inference.Scorer` over the entered route ``--backend`` / ``--precision`` ask for
    (:func:`spai_cli.routes.route_runners`), with the model's patch spec, its calibration (the checkpoint's, or the
    ``--onnx`` export's calibration.json) and the ``--max-pixels`` / ``--max-bytes`` limits."""
    import spai
    from spai.config import get_config

    explicit = None if args.precision == "auto" else resolve_route(args.backend, args.precision)[0]
    needs_model = explicit in (None, "torch") or not args.onnx or args.checkpoint  # an ORT route needs the graphs
    model = spai.create_model(None if args.checkpoint else args.model, checkpoint=args.checkpoint) \
        if needs_model else None
    backend, precision, onnx_dir = chosen_route(args, model)
    spec = model.patch_spec if model is not None else patch_spec_from_config(get_config(args.model))
    calibration = model.calibration if model is not None else calibration_from_export(args.onnx)
    calibration.operating_point(args.operating_point)  # an unknown operating point fails before any export
    limits = InputLimits(max_bytes=args.max_bytes, max_pixels=args.max_pixels)
    with route_runners(model, backend, precision, onnx_dir, args.chunk_size) as route:
        model = None  # an ORT route holds the graphs only: the torch weights can go
        yield Scorer.for_route(route, limits=limits, spec=spec, calibration=calibration)


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
        from spai.ray_scoring import predict_with_ray  # the one in-function import: Ray is an optional extra
    except ImportError as e:
        raise SPAIError(f"--engine ray needs Ray ({e}); install the `ray` extra: pip install "
                        "'spai-deploy[ray]'.") from e
    written = predict_with_ray(args, refs, writer, scorer_factory=predict_scorer)
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
