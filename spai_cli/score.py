"""``spai score``: score images with a running Triton server (``spai`` model), write the scores file and heatmaps.

A corpus streams (:mod:`spai_cli.streaming`): inputs listed lazily, ``--concurrency`` requests in flight and at
most ``--window`` inputs read ahead, each row written as it finishes (CSV or Parquet, ``--resume``)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from spai.errors import SPAIError
from spai.infer.scores import ImageScore
from spai_cli.streaming import add_corpus_arguments, check_sources, pending_inputs, scores_output, write_all


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("score", help="score images with a running Triton server")
    add_corpus_arguments(p, output_required=True)
    p.add_argument("--url", default="127.0.0.1:8000", help="server address (HTTP port for http, gRPC for grpc)")
    p.add_argument("--protocol", choices=["http", "grpc"], default="http")
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    p.add_argument("--retries", type=int, default=2, help="retries per image on connection or server errors")
    p.add_argument("--heatmaps", help="write per-patch attention heatmap PNGs into this directory")
    p.add_argument("--model", default="spai", help="Triton model name")
    p.add_argument("--operating-point", metavar="NAME",
                   help="decide at this operating point of the served model (default: its default)")
    p.set_defaults(func=run)


def write_heatmaps(rows: Sequence[ImageScore], directory: str | Path) -> int:
    """One <stem>.heatmap.png per scored image with attention; returns how many were written."""
    return sum(write_heatmap(row, directory) for row in rows)


def write_heatmap(row: ImageScore, directory: str | Path) -> bool:
    """<stem>.heatmap.png of one scored image with attention; whether it was written."""
    from spai.review.heatmaps import save_heatmap

    if row.error or row.attention is None or not len(row.attention):
        return False
    save_heatmap(row.image, row.attention, Path(directory) / f"{Path(row.image).stem}.heatmap.png",
                 probability=row.probability, decision=row.decision, operating_point=row.operating_point)
    return True


def run(args: argparse.Namespace) -> int:
    from serving.client import SpaiClient

    check_sources(args.inputs)
    heatmaps = [0]

    def on_row(row: ImageScore) -> None:
        heatmaps[0] += bool(args.heatmaps) and write_heatmap(row, args.heatmaps)

    with SpaiClient(args.url, args.protocol, args.model, retries=args.retries) as client, \
            scores_output(args) as writer:
        refs, done = pending_inputs(args)
        rows = client.score_stream(refs, args.concurrency, with_attention=bool(args.heatmaps),
                                   operating_point=args.operating_point, window=max(args.window, args.concurrency))
        tally = write_all(rows, writer, args, done, on_row)
    print(f"scored {tally.scored - tally.failed}/{tally.scored} images -> {args.output}"
          + (f" ({len(done)} already there)" if done else ""))
    for r in tally.errors:
        print(f"  error {r.image}: {r.error}")
    if args.heatmaps:
        print(f"wrote {heatmaps[0]} heatmaps to {args.heatmaps}")
    print(tally.flagged.summary())
    if tally.scored and tally.failed == tally.scored:
        raise SPAIError(f"no image could be scored (first error: {tally.errors[0].error}); is the server at "
                        f"{args.url} up (`spai serve`) and the protocol right?")
    return 0
