"""``spai predict``: score images in-process (no server), print a table, optionally write the scores CSV."""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from spai.errors import ImageError, SPAIError
from spai.images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, expand_inputs
from spai.inference import CSV_FIELDS, Calibration, ImageScore, flagged_summary, write_scores_csv


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="score images in-process with PyTorch")
    p.add_argument("inputs", nargs="+", help="image files, directories or CSV files (image/path column)")
    p.add_argument("--model", default="spai-fusion-b16", help="named config (random weights) ...")
    p.add_argument("--checkpoint", help="checkpoint file (ours, upstream spai.pth, fork ckpt_epoch_N.pth)")
    p.add_argument("-o", "--output", help=f"write a CSV with {', '.join(CSV_FIELDS)}")
    p.add_argument("--operating-point", metavar="NAME",
                   help="decide at this operating point of a calibrated checkpoint (default: its default, e.g. "
                        "fpr0.01; an uncalibrated model decides at p0.5)")
    p.add_argument("--chunk-size", type=int, help="patches per encoder call (memory knob; results unchanged)")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help=f"refuse larger images (decompression-bomb guard; default {DEFAULT_MAX_PIXELS})")
    p.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_BYTES,
                   help=f"refuse larger files (default {DEFAULT_MAX_BYTES})")
    p.set_defaults(func=run)


def score_paths(model: Any, paths: Sequence[Path], chunk_size: int | None = None, operating_point: str | None = None,
                **limits: int) -> list[ImageScore]:
    """One score per image, timed; a bad image gets its error and never stops the others."""
    model.calibration.operating_point(operating_point)  # an unknown operating point fails before any work
    rows = []
    for path in paths:
        start = time.perf_counter()
        try:
            (row,) = model.score_images([path], chunk_size=chunk_size, operating_point=operating_point, **limits)
        except ImageError as e:
            row = ImageScore(str(path), error=str(e))
        row.latency_ms = (time.perf_counter() - start) * 1e3
        rows.append(row)
    return rows


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
    import spai

    paths = expand_inputs(args.inputs)
    model = spai.create_model(None if args.checkpoint else args.model, checkpoint=args.checkpoint)
    rows = score_paths(model, paths, args.chunk_size, args.operating_point, max_pixels=args.max_pixels,
                       max_bytes=args.max_bytes)
    print_table(rows)
    if args.output:
        print(f"wrote {write_scores_csv(rows, args.output)}")
    print(f"{flagged_summary(rows)}\n{describe_point(model.calibration, args.operating_point)}")
    if all(r.error for r in rows):
        raise SPAIError("no image could be scored (see the errors above).")
    return 0
