"""Score rows and the files that hold them: one schema for every scorer, written row by row, resumable.

Columns (:data:`CSV_FIELDS`, the same in CSV and Parquet): the score (``image`` ... ``error``) and the resume key of
its input (``size_bytes``, ``mtime``; empty where unknown, e.g. standard input). A file may hold an image more than
once (an input that changed and was scored again, a failure retried): readers take the last row per image.

What survives a SIGKILL at any instant (a run resumed with :func:`open_score_writer` ``resume=True`` scores only
what :func:`done_inputs` lacks):

- CSV: each row is written and flushed as it finishes (fsync every few seconds and at close), so a kill loses at
  most the row being written; resuming first cuts a torn last row (and a torn header) off, then appends.
- Parquet: a Parquet file is only readable once its footer is written, so rows are first written in row groups of
  their own: each group (every :data:`ROWS_PER_GROUP` rows or :data:`FLUSH_SECONDS`) becomes a complete file
  ``part-NNNNNN.parquet`` in the hidden sidecar folder ``.<name>.parts/`` beside the output, under a temporary name
  renamed when complete (a part is whole or absent). Closing merges the previous output (if any) and the parts, one
  row group per part, the last row per image kept, into the output (again renamed when complete) and removes the
  sidecar. A kill loses at most the rows of the unfinished group; resuming reads the output and the parts (a part
  that cannot be read is dropped: its rows are scored again). Until the run closes, the output is the previous
  file (or absent) and the rows so far are in the sidecar.
"""

from __future__ import annotations

import csv
import math
import os
import shutil
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from spai.errors import DataError, SPAIError
from spai.files import atomic_path
from spai.infer.scores import CSV_FIELDS, FlaggedCount, ImageScore, csv_row_from_record, record_from_csv_row
from spai.lazy import lazy_import

pa = lazy_import("pyarrow")
pq = lazy_import("pyarrow.parquet")

ROWS_PER_GROUP = 1000
FLUSH_SECONDS = 10.0
FSYNC_SECONDS = 5.0


def write_scores_csv(scores: Sequence[ImageScore], path: str | Path) -> Path:
    """One CSV schema for every scorer: :data:`CSV_FIELDS`, one row per image (the whole file at once)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # surrogateescape: a non-UTF-8 file name is written back byte for byte instead of crashing the run
    with open(path, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
        writer = csv.DictWriter(f, fieldnames=list(CSV_FIELDS))
        writer.writeheader()
        writer.writerows(s.row() for s in scores)
    return path


def flagged_summary(scores: Iterable[ImageScore]) -> str:
    """The closing line of ``spai predict`` / ``spai score``: how many scored images were flagged, and where."""
    count = FlaggedCount()
    for s in scores:
        count.add(s)
    return count.summary()


def is_parquet_path(path: str | os.PathLike) -> bool:
    """Outputs are Parquet by suffix (``.parquet`` / ``.pq``), CSV otherwise."""
    return Path(path).suffix.lower() in (".parquet", ".pq")


def parts_dir(path: str | os.PathLike) -> Path:
    """The sidecar folder of a Parquet output's row groups while a run is writing it."""
    p = Path(path)
    return p.parent / f".{p.name}.parts"


def _schema() -> Any:
    return pa.schema([("image", pa.string()), ("probability", pa.float64()), ("logit", pa.float64()),
                      ("decision", pa.bool_()), ("operating_point", pa.string()), ("num_patches", pa.int64()),
                      ("latency_ms", pa.float64()), ("error", pa.string()), ("size_bytes", pa.int64()),
                      ("mtime", pa.float64())])


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
    """Row groups as complete part files in the sidecar, merged into the output at close (module docstring)."""

    def __init__(self, path: Path, rows_per_group: int = ROWS_PER_GROUP, flush_s: float = FLUSH_SECONDS) -> None:
        super().__init__(path)
        self.rows_per_group, self.flush_s = rows_per_group, flush_s
        self._parts = parts_dir(path)
        self._parts.mkdir(parents=True, exist_ok=True)
        self._seq = 1 + max((int(p.stem.split("-")[1]) for p in _part_files(self._parts)), default=0)
        self._pending: list[dict[str, Any]] = []
        self._flushed = time.monotonic()
        self._closed = False

    def write_record(self, record: Mapping[str, Any]) -> None:
        self._pending.append({k: record.get(k) for k in CSV_FIELDS})
        self.rows_written += 1
        if len(self._pending) >= self.rows_per_group or time.monotonic() - self._flushed >= self.flush_s:
            self.flush()

    def flush(self) -> None:
        """Write the pending rows as one part (whole or absent, even if killed while writing)."""
        if self._pending:
            table = pa.Table.from_pylist(self._pending, schema=_schema())
            with atomic_path(self._parts / f"part-{self._seq:06d}.parquet", fsync=True) as tmp:
                pq.write_table(table, tmp)
            self._seq += 1
            self._pending = []
        self._flushed = time.monotonic()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.flush()
        merge_parquet_parts(self.path)


def _part_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("part-[0-9][0-9][0-9][0-9][0-9][0-9].parquet"))


def _readable(path: Path) -> bool:
    try:
        pq.ParquetFile(path).metadata  # noqa: B018 - reading the footer is the check
        return True
    except Exception:  # noqa: BLE001 - pyarrow raises ArrowInvalid / OSError alike for a damaged file
        return False


def _parquet_sources(path: Path) -> list[Path]:
    """The output (if any) then its parts, in the order their rows were written."""
    parts = _part_files(parts_dir(path)) if parts_dir(path).is_dir() else []
    return ([path] if path.exists() else []) + parts


def merge_parquet_parts(path: Path) -> Path:
    """Output + sidecar parts -> one Parquet file (one row group per source, the last row per image), renamed onto
    ``path`` when complete; then the sidecar goes. Streams: only the images' names are held."""
    sources = _parquet_sources(path)
    last: dict[str, tuple[int, int]] = {}
    for i, src in enumerate(sources):
        for j, image in enumerate(pq.read_table(src, columns=["image"]).column("image").to_pylist()):
            last[image] = (i, j)
    with atomic_path(path, fsync=True) as tmp:
        with pq.ParquetWriter(tmp, _schema()) as out:
            for i, src in enumerate(sources):
                table = pq.read_table(src, schema=_schema())
                keep = [j for j, image in enumerate(table.column("image").to_pylist()) if last[image] == (i, j)]
                if keep:
                    out.write_table(table.take(keep) if len(keep) < table.num_rows else table)
        os.chmod(tmp, 0o666 & ~_umask())  # a temporary file is private (0600); the output gets a new file's mode
    shutil.rmtree(parts_dir(path), ignore_errors=True)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def repair_parquet(path: Path) -> None:
    """Drop unreadable sidecar parts and leftover temporary files; refuse an unreadable output."""
    if path.exists() and not _readable(path):
        raise DataError(f"{path} is not a readable Parquet file; move it away and run again (or write to another "
                        "path with -o).")
    sidecar = parts_dir(path)
    for leftover in [*path.parent.glob(f".{path.name}.*.partial"), *sidecar.glob(".*.partial")]:
        leftover.unlink(missing_ok=True)
    for part in _part_files(sidecar) if sidecar.is_dir() else []:
        if not _readable(part):
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
    """A writer to ``path`` (Parquet by suffix, with ``rows_per_group``; else CSV). An existing output (or an
    unfinished run's sidecar) is refused unless ``resume``: then it is repaired first and appended to."""
    path = Path(path)
    exists = path.exists() or (is_parquet_path(path) and parts_dir(path).is_dir())
    if exists and not resume:
        raise SPAIError(f"{path} already exists (an earlier run's scores); pass --resume to score only the images "
                        "it does not hold yet, or choose another output with -o.")
    if is_parquet_path(path):
        repair_parquet(path)
        return ParquetScoreWriter(path, rows_per_group)
    repair_csv(path)
    return CsvScoreWriter(path)


def iter_score_records(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """Every typed row of a scores file in written order (a Parquet output's sidecar parts too; a CSV's torn last
    row is skipped), duplicates included."""
    path = Path(path)
    if is_parquet_path(path):
        for src in _parquet_sources(path):
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
            mtime = record.get("mtime")
            done[record["image"]] = (record.get("size_bytes"), None if mtime is None or math.isnan(mtime) else mtime)
    return done
