"""``spai predict``: score images in-process (no server), print a table, optionally write the scores CSV.

The route is picked by name (``--backend torch|ort``, ``--precision fp32|bf16|int8|auto``,
:mod:`spai.routes`; ``auto``: the fastest route that passed its parity gate for this checkpoint on this CPU), and
every route scores through :class:`spai.inference.Scorer` over the runners of :func:`spai.routes.runners_for`;
``latency_ms`` in the CSV is each image's scoring time."""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from spai.errors import ImageError, SPAIError
from spai.images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, expand_inputs
from spai.inference import (
    CSV_FIELDS,
    Calibration,
    ImageScore,
    InputLimits,
    Scorer,
    calibration_from_export,
    flagged_summary,
    write_scores_csv,
)
from spai.patching import patch_spec_from_config
from spai.routes import resolve_route
from spai_cli.routes import add_route_arguments, chosen_route, route_runners


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="score images in-process (PyTorch or ONNX Runtime, fp32/bf16/int8)")
    p.add_argument("inputs", nargs="+", help="image files, directories or CSV files (image/path column)")
    p.add_argument("--model", default="spai-fusion-b16", help="named config (random weights) ...")
    p.add_argument("--checkpoint", help="checkpoint file (ours, upstream spai.pth, fork ckpt_epoch_N.pth)")
    p.add_argument("-o", "--output", help=f"write a CSV with {', '.join(CSV_FIELDS)}")
    p.add_argument("--operating-point", metavar="NAME",
                   help="decide at this operating point of a calibrated checkpoint (default: its default, e.g. "
                        "fpr0.01; an uncalibrated model decides at p0.5)")
    add_route_arguments(p)
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help=f"refuse larger images (decompression-bomb guard; default {DEFAULT_MAX_PIXELS})")
    p.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_BYTES,
                   help=f"refuse larger files (default {DEFAULT_MAX_BYTES})")
    p.set_defaults(func=run)


def score_paths(scorer: Scorer, paths: Sequence[Path], operating_point: str | None = None) -> list[ImageScore]:
    """One score per image, decided at ``operating_point`` of the scorer's calibration (checked by
    :func:`predict_scorer`, before any export), timed; a bad image gets its error and never stops the others."""
    rows = []
    for path in paths:
        start = time.perf_counter()
        try:
            (row,) = scorer.score_images([path], operating_point)
        except ImageError as e:
            row = ImageScore(str(path), error=str(e))
        row.latency_ms = (time.perf_counter() - start) * 1e3
        rows.append(row)
    return rows


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
    paths = expand_inputs(args.inputs)
    with predict_scorer(args) as scorer:
        rows = score_paths(scorer, paths, args.operating_point)
    calibration = scorer.calibration
    print_table(rows)
    if args.output:
        print(f"wrote {write_scores_csv(rows, args.output)}")
    print(f"{flagged_summary(rows)}\n{describe_point(calibration, args.operating_point)}")
    if all(r.error for r in rows):
        raise SPAIError("no image could be scored (see the errors above).")
    return 0
