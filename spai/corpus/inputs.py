"""The inputs of a scoring run, listed lazily: nothing proportional to the corpus is held.

Sources (``spai predict`` / ``spai score`` arguments): image files; folders (their images, sorted by name, listed
as they are reached); CSV files (an ``image`` / ``path`` / ``file`` column, else the first; relative paths against
the CSV's folder) and ``.txt`` / ``.lst`` lists (one path or URL a line; blank lines and ``#`` comments skipped),
read a line at a time; ``-``: paths or URLs from standard input; URLs (``s3://``, ``gs://``, ``https://``,
``file://``, any fsspec protocol) read through fsspec, a URL ending in ``/`` naming every image under that prefix.

Each input is an :class:`InputRef`: its key (path or URL, the key of its row in the scores file) and, when cheap
to know (a local ``stat``, a listing's details, one ``info`` for a URL given as an argument), its size and
modification time, which let a resumed run score again an input that changed. A source that does not exist fails
the run at once; an entry of a list that cannot be read fails alone, as its image's error (:func:`read_input`).
"""

from __future__ import annotations

import csv
import os
import re
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from spai.errors import ImageError, SPAIError
from spai.infer.images import IMAGE_EXTENSIONS
from spai.infer.prepare import InputLimits, PreparedImage, prepare_image
from spai.infer.scorer import Scorer
from spai.infer.scores import ImageScore
from spai.lazy import lazy_import

fsspec = lazy_import("fsspec")

T = TypeVar("T")
R = TypeVar("R")
LIST_SUFFIXES = (".txt", ".lst")
DEFAULT_LIMITS = InputLimits()
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


@dataclass(frozen=True)
class InputRef:
    """One input: ``key`` (its path or URL), and its ``size`` in bytes and ``mtime`` (seconds) when known."""

    key: str
    size: int | None = None
    mtime: float | None = None


def is_url(text: str) -> bool:
    """``scheme://...`` (s3, gs, https, file, ...): read through fsspec."""
    return bool(_URL.match(text))


def iter_inputs(sources: Sequence[str]) -> Iterator[InputRef]:
    """Every input of ``sources``, in order, as it is reached (module docstring); :class:`ImageError` for a source
    that does not exist, or when no source holds an image."""
    found = False
    for source in sources:
        for ref in _refs_of(source):
            found = True
            yield ref
    if not found:
        raise ImageError(f"no images found in {', '.join(sources)} (extensions: "
                         f"{', '.join(sorted(IMAGE_EXTENSIONS))}).")


def expand_inputs(inputs: Sequence[str]) -> list[Path]:
    """All local inputs of ``inputs`` at once, as paths (what small callers want; a run streams
    :func:`iter_inputs`)."""
    return [Path(ref.key) for ref in iter_inputs(inputs)]


def _refs_of(source: str) -> Iterator[InputRef]:
    if source == "-":
        yield from _entries((line.rstrip("\r\n") for line in sys.stdin), None)
        return
    if is_url(source):
        yield from (_walk_url(source) if source.endswith("/") else [_url_ref(source)])
        return
    path = Path(source)
    if path.is_dir():
        yield from _walk_dir(path)
    elif path.is_file() and path.suffix.lower() == ".csv":
        yield from _entries(_csv_column(path), path.parent)
    elif path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
        yield from _entries(_list_lines(path), path.parent)
    elif path.exists():
        yield _local_ref(path)
    else:
        raise ImageError(f"{source}: no such file or directory.")


def _local_ref(path: Path) -> InputRef:
    try:
        st = path.stat()
    except OSError:
        return InputRef(str(path))  # read_input gives this image its error
    return InputRef(str(path), st.st_size, st.st_mtime)


def _entries(lines: Iterable[str], base: Path | None) -> Iterator[InputRef]:
    """List entries -> refs: URLs as they are (an ``info`` each would cost a request), local paths stat'ed."""
    for line in lines:
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        if is_url(entry):
            yield InputRef(entry)
        else:
            path = Path(entry)
            yield _local_ref(path if path.is_absolute() or base is None else base / path)


def _walk_dir(directory: Path) -> Iterator[InputRef]:
    """The images directly in ``directory``, by name."""
    with os.scandir(directory) as it:
        names = sorted(e.name for e in it if e.is_file() and Path(e.name).suffix.lower() in IMAGE_EXTENSIONS)
    for name in names:
        yield _local_ref(directory / name)


def _csv_column(path: Path) -> Iterator[str]:
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
        rows = csv.reader(f)
        first = next(rows, None)
        if first is None:
            return
        header = [h.strip().lower() for h in first]
        col = next((header.index(c) for c in ("image", "path", "file") if c in header), None)
        if col is None:
            yield first[0] if first else ""
        for row in rows:
            if len(row) > (col or 0):
                yield row[col or 0]


def _list_lines(path: Path) -> Iterator[str]:
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        yield from f


def _mtime_from_info(info: Mapping[str, Any]) -> float | None:
    """A listing's modification time, whatever the filesystem calls it (seconds since the epoch)."""
    for name in ("mtime", "LastModified", "last_modified", "updated", "modified", "created"):
        value = info.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, str):
            try:
                return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
    return None


def _ref_from_info(key: str, info: Mapping[str, Any]) -> InputRef:
    size = info.get("size")
    return InputRef(key, int(size) if isinstance(size, (int, float)) else None, _mtime_from_info(info))


def _url_ref(url: str) -> InputRef:
    """A URL given as an argument: one ``info`` for its size and time (an unreadable one fails at read)."""
    try:
        fs, path = fsspec.core.url_to_fs(url)
        return _ref_from_info(url, fs.info(path))
    except Exception:  # noqa: BLE001 - each filesystem raises its own types; read_input reports the cause
        return InputRef(url)


def _walk_url(prefix: str) -> Iterator[InputRef]:
    """Every image under an object-store prefix, by name within each level, with the listing's size and time."""
    try:
        fs, root = fsspec.core.url_to_fs(prefix)
        protocol = prefix.split("://", 1)[0]
        for folder, _, files in fs.walk(root, detail=True):
            for name in sorted(files):
                if Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                    yield _ref_from_info(f"{protocol}://{folder.rstrip('/')}/{name}", files[name])
    except ImportError as e:
        raise ImageError(f"{prefix}: reading it needs {e.name or 'its fsspec filesystem'}; install the `corpus` "
                         "extra (pip install 'spai-deploy[corpus]').") from e
    except (OSError, ValueError) as e:
        raise ImageError(f"{prefix}: cannot list it ({type(e).__name__}: {e}); check the URL and credentials.") \
            from e


def read_input(ref: InputRef, limits: InputLimits = DEFAULT_LIMITS) -> bytes:
    """The bytes of one input, refused past ``limits.max_bytes`` while reading (never more is read);
    :class:`ImageError` naming it when it is missing, unreadable, a folder, or shorter than its listing said."""
    if is_url(ref.key):
        data = _read_url(ref.key, limits.max_bytes)
    else:
        data = _read_local(Path(ref.key), limits.max_bytes)
    if ref.size is not None and len(data) < ref.size:
        raise ImageError(f"{ref.key}: truncated: read {len(data)} of the {ref.size} bytes it was listed with.")
    return data


def _over(name: str, size: int, max_bytes: int) -> ImageError:
    return ImageError(f"{name}: {size} bytes or more, over the limit of {max_bytes}; raise the limit "
                      "(--max-bytes) if this image is legitimate.")


def _read_local(path: Path, max_bytes: int) -> bytes:
    try:
        if path.is_dir():
            raise ImageError(f"{path}: is a directory, not an image file.")
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise ImageError(f"{path}: cannot read file ({e.strerror or e}).") from e
    if len(data) > max_bytes:
        raise _over(str(path), len(data), max_bytes)
    return data


def _read_url(url: str, max_bytes: int) -> bytes:
    try:
        fs, path = fsspec.core.url_to_fs(url)
        with fs.open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except ImportError as e:
        raise ImageError(f"{url}: reading it needs {e.name or 'its fsspec filesystem'}; install the `corpus` extra "
                         "(pip install 'spai-deploy[corpus]').") from e
    except FileNotFoundError as e:
        raise ImageError(f"{url}: no such object (check the bucket and key).") from e
    except PermissionError as e:
        raise ImageError(f"{url}: access denied ({e}); check the credentials.") from e
    except Exception as e:  # noqa: BLE001 - each filesystem (s3fs, gcsfs, http) raises its own error types
        raise ImageError(f"{url}: cannot read ({type(e).__name__}: {e}).") from e
    if len(data) > max_bytes:
        raise _over(url, len(data), max_bytes)
    return data


def is_done(ref: InputRef, done: Mapping[str, tuple[int | None, float | None]]) -> bool:
    """Whether an earlier run scored this input as it is now (same size and time, where both are known)."""
    if ref.key not in done:
        return False
    size, mtime = done[ref.key]
    return (ref.size is None or size is None or size == ref.size) and \
        (ref.mtime is None or mtime is None or mtime == ref.mtime)


def todo_inputs(refs: Iterable[InputRef], done: Mapping[str, tuple[int | None, float | None]]
                ) -> Iterator[InputRef]:
    """The inputs a resumed run still has to score."""
    return (ref for ref in refs if not is_done(ref, done))


def map_bounded(fn: Callable[[T], R], items: Iterable[T], window: int, workers: int
                ) -> Iterator[tuple[T, Future[R]]]:
    """(item, its finished future) in input order, ``fn`` run on ``workers`` threads with at most ``window``
    items taken from ``items`` and not yet handed back: memory bounded by the window, not the corpus."""
    pending: deque[tuple[T, Future[R]]] = deque()
    with ThreadPoolExecutor(max(1, workers)) as pool:
        try:
            for item in items:
                pending.append((item, pool.submit(fn, item)))
                if len(pending) >= max(1, window):
                    item0, future = pending.popleft()
                    future.exception()  # wait
                    yield item0, future
            while pending:
                item0, future = pending.popleft()
                future.exception()
                yield item0, future
        finally:
            for _, future in pending:
                future.cancel()


def score_inputs(scorer: Scorer, refs: Iterable[InputRef], operating_point: str | None = None, window: int = 16,
                 workers: int = 2, fetch: Callable[[InputRef], bytes] | None = None) -> Iterator[ImageScore]:
    """One score per input, in order, decided at ``operating_point``: ``workers`` threads read (``fetch``, default
    :func:`read_input` under the scorer's limits) and decode at most ``window`` inputs ahead while the scorer
    scores one at a time (its scores do not depend on what else is in flight). Timed (read, decode and scoring);
    a bad image gets its error row and never stops the others. Both engines of ``spai predict`` score through it."""
    limits = scorer.input_limits()
    read = fetch or (lambda ref: read_input(ref, limits))

    def prepare(ref: InputRef) -> tuple[PreparedImage, float]:
        start = time.perf_counter()
        return prepare_image(read(ref), ref.key, limits, scorer.spec), time.perf_counter() - start

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
