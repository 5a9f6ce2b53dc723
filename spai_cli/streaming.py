"""What ``spai predict`` and ``spai score`` share to score a corpus: the inputs still to score (``--resume``), the
output written row by row, a progress bar with images/s and the ETA, and the closing lines, all without holding
anything proportional to the corpus (the table shows the first :data:`TABLE_ROWS` rows only)."""

from __future__ import annotations

import argparse
import contextlib
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from spai.corpus.inputs import InputRef, is_url, iter_inputs, todo_inputs
from spai.corpus.writers import FLUSH_SECONDS, ROWS_PER_GROUP, ScoreWriter, done_inputs, open_score_writer
from spai.errors import ImageError, SPAIError
from spai.infer.scores import CSV_FIELDS, FlaggedCount, ImageScore
from spai.lazy import lazy_import

tqdm = lazy_import("tqdm")

TABLE_ROWS = 50


def add_corpus_arguments(p: argparse.ArgumentParser, output_required: bool = False) -> None:
    """The inputs, ``-o`` (CSV or Parquet), ``--resume``, ``--window`` and ``--no-progress``."""
    p.add_argument("inputs", nargs="+", help="image files, folders, CSV files (image/path column), .txt lists, - "
                   "(paths from standard input) or URLs (s3://, gs://, https://, file://; a URL ending in / "
                   "names every image under it)")
    p.add_argument("-o", "--output", required=output_required,
                   help=f"scores file, CSV or .parquet (a folder of part files), written as rows finish: "
                        f"{', '.join(CSV_FIELDS)}")
    p.add_argument("--resume", action="store_true",
                   help="continue into an existing -o: score only the inputs it does not hold yet (or that "
                        "changed since, or failed)")
    p.add_argument("--window", type=int, default=16,
                   help="at most this many images read ahead and in flight (bounds memory; default 16)")
    p.add_argument("--row-group", type=int, default=ROWS_PER_GROUP,
                   help=f"Parquet: rows per part file, each on disk once full or {FLUSH_SECONDS:g} s old (default "
                        f"{ROWS_PER_GROUP}; a kill loses at most the unfinished one)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def check_sources(sources: Sequence[str]) -> None:
    """Fail at once (before a model is loaded) for a local source that does not exist."""
    for source in sources:
        if source != "-" and not is_url(source) and not Path(source).exists():
            raise ImageError(f"{source}: no such file or directory.")


@contextlib.contextmanager
def scores_output(args: argparse.Namespace) -> Iterator[ScoreWriter | None]:
    """The writer of ``-o`` (None without one); refuses ``--resume`` without ``-o``."""
    if not args.output:
        if args.resume:
            raise SPAIError("--resume continues into a scores file: pass it with -o (the file of the earlier run).")
        yield None
        return
    if is_url(args.output):
        raise SPAIError(f"-o {args.output}: scores are written to a local file (appended row by row, synced, "
                        "resumable), not to object storage; write them locally (-o scores.parquet) and copy the "
                        "folder when the run is done (e.g. aws s3 cp --recursive scores.parquet "
                        "s3://bucket/scores.parquet/).")
    with open_score_writer(args.output, resume=args.resume, rows_per_group=args.row_group) as writer:
        yield writer


def pending_inputs(args: argparse.Namespace) -> tuple[Iterator[InputRef], dict[str, tuple[int | None, float | None]]]:
    """The inputs still to score, lazily, and what the output already holds (empty unless ``--resume``)."""
    done = done_inputs(args.output) if args.resume and args.output else {}
    return todo_inputs(iter_inputs(args.inputs), done), done


def _count_in_background(sources: Sequence[str], done: dict[str, tuple[int | None, float | None]], bar: object
                         ) -> None:
    """Set the bar's total (what makes the ETA) from a second, counting-only listing; not for standard input."""
    def count() -> None:
        try:
            total = sum(1 for _ in todo_inputs(iter_inputs(sources), done))
        except Exception:  # noqa: BLE001 - the run itself reports a bad source; the bar just has no ETA
            return
        bar.total = total  # type: ignore[attr-defined]
    if "-" not in sources:
        threading.Thread(target=count, daemon=True, name="count-inputs").start()


@dataclass
class RunTally:
    """What a run prints at its end: the first rows (the table), counts, the first errors."""

    first: list[ImageScore] = field(default_factory=list)
    flagged: FlaggedCount = field(default_factory=FlaggedCount)
    scored: int = 0
    failed: int = 0
    errors: list[ImageScore] = field(default_factory=list)

    def add(self, score: ImageScore) -> None:
        self.scored += 1
        self.flagged.add(score)
        if len(self.first) < TABLE_ROWS:
            self.first.append(score)
        if score.error:
            self.failed += 1
            if len(self.errors) < 10:
                self.errors.append(score)


def write_all(scores: Iterable[ImageScore], writer: ScoreWriter | None, args: argparse.Namespace,
              done: dict[str, tuple[int | None, float | None]],
              on_row: Callable[[ImageScore], None] | None = None) -> RunTally:
    """Write each score as it comes (the attention is dropped once ``on_row`` has seen it), counting, with a
    progress bar (images/s; the ETA once the background count is in)."""
    tally = RunTally()
    with tqdm.tqdm(desc="scoring", unit="img", file=sys.stderr, disable=True if args.no_progress else None,
                   dynamic_ncols=True) as bar:
        _count_in_background(args.inputs, done, bar)
        for score in scores:
            if on_row is not None:
                on_row(score)
            score.attention = None
            if writer is not None:
                writer.write(score)
            tally.add(score)
            bar.update()
    return tally
