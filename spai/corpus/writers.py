"""Score rows and the files that hold them: one schema for every scorer, written row by row, resumable.

Columns (:data:`CSV_FIELDS`, the same in CSV and Parquet): the score (``image`` ... ``error``) and the resume key of
its input (``size_bytes``, ``mtime``; empty where unknown, e.g. standard input). A file may hold an image more than
once (an input that changed and was scored again, a failure retried): readers take the last row per image.

What survives a SIGKILL at any instant (a run resumed with :func:`open_score_writer` ``resume=True`` scores only
what :func:`done_inputs` lacks):

- CSV: each row is written and flushed as it finishes (fsync every few seconds and at close), so a kill loses at
  most the row being written; resuming first cuts a torn last row (and a torn header) off, then appends.
- Parquet: the output is a directory of part files (as ``pyarrow.dataset.write_dataset`` and Ray's
  ``write_parquet`` write them; ``pyarrow.dataset.dataset(path)`` and ``pandas.read_parquet(path)`` read it, skipping
  hidden files): every :data:`ROWS_PER_GROUP` rows or :data:`FLUSH_SECONDS`, the pending rows become one complete
  file ``part-NNNNNN.parquet``, written under a hidden temporary name and renamed (a part is whole or absent). A kill
  loses at most the pending rows; resuming removes leftover temporary files and any part that cannot be read (its
  rows are scored again), then writes the next parts. A single Parquet file (what earlier versions wrote) is read too.
"""

from __future__ import annotations

import csv
import logging
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from spai.errors import DataError, SPAIError
from spai.files import atomic_path
from spai.infer.scores import COLUMNS, CSV_FIELDS, ImageScore, csv_row_from_record, record_from_csv_row
from spai.lazy import lazy_import

log = logging.getLogger(__name__)
pa = lazy_import("pyarrow")
pq = lazy_import("pyarrow.parquet")

ROWS_PER_GROUP = 1000
FLUSH_SECONDS = 10.0
FSYNC_SECONDS = 5.0
PART_GLOB = "part-[0-9][0-9][0-9][0-9][0-9][0-9].parquet"  # what this writer names its parts


def is_parquet_path(path: str | os.PathLike) -> bool:
    """Outputs are Parquet by suffix (``.parquet`` / ``.pq``), CSV otherwise; a directory is read as Parquet parts."""
    return Path(path).suffix.lower() in (".parquet", ".pq") or Path(path).is_dir()


def arrow_schema() -> Any:
    """The row (:data:`~spai.infer.scores.COLUMNS`) as Arrow columns, each nullable: a Parquet part's schema."""
    return pa.schema([(c.name, pa.from_numpy_dtype(np.dtype(c.kind))) for c in COLUMNS])


def parquet_files(path: Path) -> list[Path]:
    """A Parquet output's files in written order: a directory's parts (what pyarrow.dataset reads: hidden names
    and ``_`` names left out), or the file itself."""
    if path.is_dir():
        return sorted(p for p in path.glob("*.parquet") if not p.name.startswith((".", "_")))
    return [path] if path.exists() else []


class ScoreWriter:
    """Rows out as they finish (a context manager); :func:`open_score_writer` picks CSV or Parquet."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows_written = 0

    def write(self, score: ImageScore) -> None:
        """One image's score, with its input's resume key (``size_bytes`` / ``mtime``)."""
        self.write_record(score.record())

    def write_record(self, record: Mapping[str, Any]) -> None:
        """One typed row (:data:`CSV_FIELDS`; what :meth:`ImageScore.record` returns)."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> ScoreWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


class CsvScoreWriter(ScoreWriter):
    """Appends rows, flushed one by one, fsynced every :data:`FSYNC_SECONDS` and at close."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not path.exists() or path.stat().st_size == 0
        self._file = open(path, "a", newline="", encoding="utf-8", errors="surrogateescape")
        self._writer = csv.DictWriter(self._file, fieldnames=list(CSV_FIELDS), lineterminator="\n")
        if fresh:
            self._writer.writeheader()
            self._sync()
        self._synced = time.monotonic()

    def write_record(self, record: Mapping[str, Any]) -> None:
        self._writer.writerow(csv_row_from_record(record))
        self._file.flush()  # in the OS now: a killed process loses nothing written so far
        self.rows_written += 1
        if time.monotonic() - self._synced >= FSYNC_SECONDS:
            self._sync()

    def _sync(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._synced = time.monotonic()

    def close(self) -> None:
        if not self._file.closed:
            self._sync()
            self._file.close()


class ParquetScoreWriter(ScoreWriter):
    """Rows in groups, each a complete part file of the output directory (module docstring)."""

    def __init__(self, path: Path, rows_per_group: int = ROWS_PER_GROUP, flush_s: float = FLUSH_SECONDS) -> None:
        super().__init__(path)
        self.rows_per_group, self.flush_s = rows_per_group, flush_s
        self._seq = 1 + max((int(p.stem[5:]) for p in path.glob(PART_GLOB)), default=0)
        self._pending: list[dict[str, Any]] = []
        self._flushed = time.monotonic()

    def write_record(self, record: Mapping[str, Any]) -> None:
        self._pending.append({k: record.get(k) for k in CSV_FIELDS})
        self.rows_written += 1
        if len(self._pending) >= self.rows_per_group or time.monotonic() - self._flushed >= self.flush_s:
            self.flush()

    def flush(self) -> None:
        """Write the pending rows as the next part (whole or absent, even if killed while writing)."""
        if self._pending:
            table = pa.Table.from_pylist(self._pending, schema=arrow_schema())
            with atomic_path(self.path / f"part-{self._seq:06d}.parquet", fsync=True) as tmp:
                pq.write_table(table, tmp)
                os.chmod(tmp, 0o666 & ~_umask())  # a temporary file is private (0600); a part gets a new file's mode
            self._seq += 1
            self._pending = []
        self._flushed = time.monotonic()

    def close(self) -> None:
        self.flush()


def _readable(path: Path) -> bool:
    try:
        pq.ParquetFile(path).metadata  # noqa: B018 - reading the footer is the check
        return True
    except Exception:  # noqa: BLE001 - pyarrow raises ArrowInvalid / OSError alike for a damaged file
        return False


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def repair_parquet(path: Path) -> None:
    """Remove what a killed run left: temporary files, parts that cannot be read; refuse a single-file output."""
    if path.is_file():
        raise DataError(f"{path} is one Parquet file (an earlier version's output); outputs are now folders of "
                        f"parts. To resume into it: mv {path} {path}.old && mkdir {path} && mv {path}.old "
                        f"{path}/part-000000.parquet; or write to a new path with -o.")
    for leftover in path.glob(".*.partial"):
        leftover.unlink(missing_ok=True)
    for part in parquet_files(path):
        if not _readable(part):
            log.warning("%s cannot be read: removed, its rows are scored again", part)
            part.unlink()


def repair_csv(path: Path) -> None:
    """Cut a torn last row off (a kill while it was written); refuse a CSV of other columns."""
    if not path.exists():
        return
    good = _complete_csv_end(path)
    if good < path.stat().st_size:
        with open(path, "r+b") as f:
            f.truncate(good)
            os.fsync(f.fileno())
    if good == 0:
        return
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
        header = next(csv.reader(f), [])
    if tuple(header) != CSV_FIELDS:
        raise DataError(f"{path} has the columns {', '.join(header)}, not those of a scores file of this version "
                        f"({', '.join(CSV_FIELDS)}); write to a new file with -o.")


def _complete_csv_end(path: Path) -> int:
    """The byte offset after the last complete record: one ending in a newline outside quotes (a quoted field may
    hold newlines; its quotes are doubled inside, so an odd count of quotes so far means still inside one)."""
    good = offset = 0
    inside = False
    with open(path, "rb") as f:
        for line in f:
            offset += len(line)
            inside ^= line.count(b'"') % 2 == 1
            if line.endswith(b"\n") and not inside:
                good = offset
    return good


def open_score_writer(path: str | os.PathLike, *, resume: bool, rows_per_group: int = ROWS_PER_GROUP
                      ) -> ScoreWriter:
    """A writer to ``path`` (Parquet by suffix: a folder of parts of ``rows_per_group`` rows; else CSV). An
    existing output is refused unless ``resume``: then it is repaired first and appended to."""
    path = Path(path)
    if path.exists() and not resume:
        raise SPAIError(f"{path} already exists (an earlier run's scores); pass --resume to score only the images "
                        "it does not hold yet, or choose another output with -o.")
    if is_parquet_path(path):
        repair_parquet(path)
        return ParquetScoreWriter(path, rows_per_group)
    repair_csv(path)
    return CsvScoreWriter(path)


def iter_score_records(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """Every typed row of a scores file in written order (a Parquet output's parts one after the other, an
    unreadable one left out; a CSV's torn last row is skipped), duplicates included."""
    path = Path(path)
    if is_parquet_path(path):
        for src in parquet_files(path):
            if _readable(src):
                for batch in pq.ParquetFile(src).iter_batches():
                    yield from batch.to_pylist()
        return
    if not path.exists():
        return
    end = _complete_csv_end(path)
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
        text_rows = csv.DictReader(_bounded_lines(f, end))
        for row in text_rows:
            yield record_from_csv_row(row)


def _bounded_lines(f: Any, end: int) -> Iterator[str]:
    """The lines of a text file up to byte offset ``end`` (a torn tail is not read)."""
    seen = 0
    for line in f:
        seen += len(line.encode("utf-8", "surrogateescape"))
        if seen > end:
            return
        yield line


def read_score_rows(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The typed rows of a CSV or Parquet scores file, one per image: the last row written for it."""
    rows: dict[str, dict[str, Any]] = {}
    for record in iter_score_records(path):
        rows.pop(record["image"], None)  # re-inserted: the dict keeps the order of each image's last row
        rows[record["image"]] = record
    return list(rows.values())


def done_inputs(path: str | os.PathLike) -> dict[str, tuple[int | None, float | None]]:
    """image -> (size_bytes, mtime) of every image an output already scored (its last row succeeded); a failed
    row is not done, so a resumed run tries it again."""
    done: dict[str, tuple[int | None, float | None]] = {}
    for record in iter_score_records(path):
        if record.get("error"):
            done.pop(record["image"], None)
        else:
            done[record["image"]] = (record.get("size_bytes"), record.get("mtime"))
    return done
