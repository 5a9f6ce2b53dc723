"""``spai predict``: score images in-process with PyTorch (no server), print a table, optionally write a CSV."""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

from spai.errors import ImageError, SPAIError
from spai.images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, expand_inputs


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="score images in-process with PyTorch")
    p.add_argument("inputs", nargs="+", help="image files or directories")
    p.add_argument("--model", default="spai-fusion-b16", help="named config (random weights) ...")
    p.add_argument("--checkpoint", help="checkpoint file (ours, upstream spai.pth, fork ckpt_epoch_N.pth)")
    p.add_argument("-o", "--output", help="write a CSV with image, probability, logit, patches, seconds")
    p.add_argument("--chunk-size", type=int, help="patches per encoder call (memory knob; results unchanged)")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help=f"refuse larger images (decompression-bomb guard; default {DEFAULT_MAX_PIXELS})")
    p.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_BYTES,
                   help=f"refuse larger files (default {DEFAULT_MAX_BYTES})")
    p.set_defaults(func=run)


def score_paths(model, paths: list[Path], chunk_size: int | None = None, **limits: int) -> list[dict]:
    """One row per image; a bad image gets an error row and never stops the others."""
    rows = []
    for path in paths:
        start = time.perf_counter()
        try:
            (res,) = model.score_images([path], chunk_size=chunk_size, **limits)
            rows.append({"image": str(path), "probability": res.probability, "logit": res.logit,
                         "patches": res.num_patches, "seconds": time.perf_counter() - start, "error": ""})
        except ImageError as e:
            rows.append({"image": str(path), "probability": "", "logit": "", "patches": 0,
                         "seconds": time.perf_counter() - start, "error": str(e)})
    return rows


def print_table(rows: list[dict], sizes: dict[str, str] | None = None) -> None:
    """Image, size, patches, probability, seconds: one line per image."""
    print(f"{'image':<44} {'size':>11} {'patches':>7} {'prob':>7} {'seconds':>8}")
    for r in rows:
        name = _printable(Path(r["image"]).name)[:44]
        size = (sizes or {}).get(r["image"], "")
        prob = f"{r['probability']:.4f}" if r["probability"] != "" else "error"
        print(f"{name:<44} {size:>11} {r['patches']:>7} {prob:>7} {r['seconds']:>8.2f}"
              + (f"  {_printable(r['error'])}" if r["error"] else ""))


def _printable(text: str) -> str:
    """A non-UTF-8 file name (surrogate-escaped by the OS layer) shown with replacement characters."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def write_csv(rows: list[dict], path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    # surrogateescape: a non-UTF-8 file name is written back byte for byte instead of crashing the run
    with open(path, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def run(args: argparse.Namespace) -> int:
    import spai

    paths = expand_inputs(args.inputs)
    model = spai.create_model(None if args.checkpoint else args.model, checkpoint=args.checkpoint)
    rows = score_paths(model, paths, args.chunk_size, max_pixels=args.max_pixels, max_bytes=args.max_bytes)
    print_table(rows)
    if args.output:
        write_csv(rows, args.output)
        print(f"wrote {args.output}")
    if all(r["error"] for r in rows):
        raise SPAIError("no image could be scored (see the errors above).")
    return 0
