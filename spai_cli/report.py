"""``spai report``: the review page of a run, one static HTML file from any scores file of ``spai predict`` /
``spai score`` (CSV or Parquet), with thumbnails, heatmaps on demand, filter, search and pages."""

from __future__ import annotations

import argparse

from spai.review.report import DEFAULT_EMBEDDED_HEATMAPS, DEFAULT_THUMBNAILS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="one static HTML page to review a run's scores (opens from disk)")
    p.add_argument("scores", help="scores file of `spai predict -o` / `spai score -o` (CSV or Parquet), "
                                  "written by a resumed run too (its last row per image counts)")
    p.add_argument("--heatmaps", metavar="DIR", help="the directory `spai score --heatmaps` wrote; a row's heatmap "
                                                     "shows when the row is opened")
    p.add_argument("--embed-heatmaps", type=int, default=DEFAULT_EMBEDDED_HEATMAPS, metavar="N",
                   help="embed the heatmaps of the first N rows that have one, flagged first (default "
                        f"{DEFAULT_EMBEDDED_HEATMAPS}); the others are linked relative to the page")
    p.add_argument("--root", metavar="DIR", help="where the image paths of the scores file are relative to "
                                                 "(default: the current directory, as when scoring)")
    p.add_argument("--thumbnails", type=int, default=DEFAULT_THUMBNAILS, metavar="N",
                   help="embed small thumbnails of the first N rows, flagged first (default "
                        f"{DEFAULT_THUMBNAILS}); the others show the original file, loaded with its page")
    p.add_argument("--threshold", type=float, metavar="P", help="the operating point's threshold to mark on the "
                                                                "histogram (default: from the decisions)")
    p.add_argument("--title", help="page title (default: from the scores file's name)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("-o", "--output", required=True, help="the HTML page to write, e.g. report.html")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from spai.review.report import html_report_from_scores

    summary = html_report_from_scores(args.scores, args.output, heatmaps=args.heatmaps, root=args.root,
                                      thumbnails=args.thumbnails, embedded_heatmaps=args.embed_heatmaps,
                                      threshold=args.threshold, title=args.title, progress=not args.no_progress)
    print(summary.line())
    size = Path(args.output).stat().st_size
    print(f"wrote {args.output} ({size / 2**20:.1f} MiB, {summary.thumbnails} thumbnails embedded, "
          f"{summary.heatmaps} heatmaps of which {summary.heatmaps_embedded} embedded)")
    return 0
