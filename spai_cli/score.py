"""``spai score``: score images with a running Triton server (``spai`` model), write the scores CSV and heatmaps."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from spai.errors import SPAIError
from spai.inference import CSV_FIELDS, ImageScore


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("score", help="score images with a running Triton server")
    p.add_argument("inputs", nargs="+", help="image files, directories or CSV files (image/path column)")
    p.add_argument("--url", default="127.0.0.1:8000", help="server address (HTTP port for http, gRPC for grpc)")
    p.add_argument("--protocol", choices=["http", "grpc"], default="http")
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    p.add_argument("--retries", type=int, default=2, help="retries per image on connection or server errors")
    p.add_argument("--heatmaps", help="write per-patch attention heatmap PNGs into this directory")
    p.add_argument("--model", default="spai", help="Triton model name")
    p.add_argument("--operating-point", metavar="NAME",
                   help="decide at this operating point of the served model (default: its default)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("-o", "--output", required=True, help=f"CSV: {', '.join(CSV_FIELDS)}")
    p.set_defaults(func=run)


def write_heatmaps(rows: Sequence[ImageScore], directory: str | Path) -> int:
    """One <stem>.heatmap.png per scored image with attention; returns how many were written."""
    from serving.heatmap import save_heatmap

    written = 0
    for row in rows:
        if not row.error and row.attention is not None and len(row.attention):
            save_heatmap(row.image, row.attention, Path(directory) / f"{Path(row.image).stem}.heatmap.png")
            written += 1
    return written


def run(args: argparse.Namespace) -> int:
    from serving.client import SpaiClient
    from spai.images import expand_inputs
    from spai.inference import flagged_summary, write_scores_csv

    paths = expand_inputs(args.inputs)
    client = SpaiClient(args.url, args.protocol, args.model, retries=args.retries)
    rows = client.score_paths(paths, args.concurrency, with_attention=bool(args.heatmaps),
                              progress=not args.no_progress, operating_point=args.operating_point)
    write_scores_csv(rows, args.output)
    failed = [r for r in rows if r.error]
    print(f"scored {len(rows) - len(failed)}/{len(rows)} images -> {args.output}")
    for r in failed[:10]:
        print(f"  error {r.image}: {r.error}")
    if args.heatmaps:
        print(f"wrote {write_heatmaps(rows, args.heatmaps)} heatmaps to {args.heatmaps}")
    print(flagged_summary(rows))
    if len(failed) == len(rows):
        raise SPAIError(f"no image could be scored (first error: {failed[0].error}); is the server at {args.url} "
                        "up (`spai serve`) and the protocol right?")
    return 0
