"""A run's scores as one static page a reviewer triages from: ``spai report SCORES -o report.html``.

Reads any scores file that ``spai predict`` / ``spai score`` write (CSV, or Parquet: a folder of parts or one file)
through :func:`spai.corpus.writers.read_score_rows`, by column name, so extra columns are fine; each row is an
:class:`spai.infer.scores.ImageScore` (:meth:`~spai.infer.scores.ImageScore.from_record`). The page
(:mod:`spai.review.page`) is self-contained: rows as embedded JSON, plain JS for filter / search / paging, an
inline SVG histogram. Images: small JPEG thumbnails are embedded for a bounded number of rows (flagged first, the
most probable first), the rest link the local originals relative to the page, loaded only when their page is
shown; a source file that is gone is marked missing at report time, so the page shows a placeholder, never a
broken image. Heatmaps come from ``--heatmaps DIR`` (``<stem>.heatmap.png``, as ``spai score`` names them): the
first ones in page order embedded (WebP), the rest linked, each shown only when its row is opened.
"""

from __future__ import annotations

import base64
import concurrent.futures
import csv
import io
import os
import re
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from PIL import Image

from spai.corpus.writers import is_parquet_path, parquet_files, read_score_rows
from spai.errors import DataError, ImageError
from spai.files import atomic_path
from spai.infer.images import DEFAULT_MAX_PIXELS, load_image
from spai.infer.scores import ImageScore
from spai.lazy import lazy_import
from spai.review.page import ReportSummary, Threshold, render_page

pq = lazy_import("pyarrow.parquet")
tqdm = lazy_import("tqdm")

__all__ = ["ReportSummary", "Threshold", "html_report_from_scores", "review_order",
           "review_rows_from_scores", "threshold_from_rows"]

REQUIRED_COLUMNS = ("image", "probability")
THUMBNAIL_SIDE = 96
THUMBNAIL_QUALITY = 70
DEFAULT_THUMBNAILS = 1000
DEFAULT_EMBEDDED_HEATMAPS = 100  # WebP, a few tens of KB each: the most probable flagged rows travel with the page
HEATMAP_QUALITY = 85
HISTOGRAM_BINS = 40
NOT_EMBEDDED, UNREADABLE = -1, -2  # a row's thumbnail slot when it has no embedded thumbnail


def _check_columns(columns: Sequence[str], path: Path) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise DataError(f"{path} is not a scores file: it has no {', '.join(missing)} column (its columns: "
                        f"{', '.join(columns) or 'none'}). Pass the file that `spai predict -o` or `spai score -o` "
                        "wrote.")


def _columns(path: Path) -> list[str]:
    """The column names of a scores file, read from its header (CSV) or its (first part's) schema (Parquet)."""
    if is_parquet_path(path):
        try:
            return [name for part in parquet_files(path)[:1] for name in pq.read_schema(part).names]
        except ImportError as e:
            raise DataError(f"{path} is Parquet, which needs pyarrow: pip install pyarrow (or write CSV).") from e
        except Exception as e:  # pyarrow raises ArrowInvalid / OSError subclasses alike
            raise DataError(f"{path}: cannot read as Parquet ({e}).") from e
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
        return next(csv.reader(f), [])


def review_rows_from_scores(path: str | os.PathLike) -> list[ImageScore]:
    """One row per image of a CSV or Parquet scores file (:func:`spai.corpus.writers.read_score_rows`: where a
    resumed run appended several, the last); refuses what is not a scores file, naming what is wrong."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such scores file; pass the CSV or Parquet that `spai predict -o` or "
                        "`spai score -o` wrote.")
    try:
        _check_columns(_columns(path), path)
        rows = [ImageScore.from_record(r) for r in read_score_rows(path)]
    except (UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path} is not a CSV scores file ({e}).") from e
    except ValueError as e:  # a cell that is not a number, as the reader parses it
        raise DataError(f"{path}: {e}; is this a scores file written by `spai predict -o` / `spai score -o`?") from e
    if not rows:
        raise DataError(f"{path} has no rows: nothing was scored. Re-run `spai predict` / `spai score` on images.")
    return rows


def review_order(rows: Sequence[ImageScore]) -> list[int]:
    """Row indices as a reviewer reads them: flagged first, then by probability (highest first); errors last."""
    def key(i: int) -> tuple[int, float, str]:
        r = rows[i]
        if r.error or r.probability is None:
            return (2, 0.0, r.image)
        return (0 if r.decision else 1, -r.probability, r.image)
    return sorted(range(len(rows)), key=key)


def threshold_from_rows(rows: Sequence[ImageScore], given: float | None = None) -> Threshold | None:
    """The threshold to mark: the one given, the one a ``p<threshold>`` name spells (the uncalibrated ``p0.5``),
    or what the decisions of a single operating point bound it to; None when several points were used."""
    if given is not None:
        return Threshold(given, given, "given")
    decided = [r for r in rows if not r.error and r.probability is not None and r.decision is not None]
    points = {r.operating_point or "" for r in decided}
    if len(points) != 1:
        return None
    (name,) = points
    spelled = re.fullmatch(r"p(\d*\.?\d+)", name)
    if spelled:
        return Threshold(float(spelled.group(1)), float(spelled.group(1)), f"operating point {name}")
    flagged = [r.probability for r in decided if r.decision]
    passed = [r.probability for r in decided if not r.decision]
    if not flagged or not passed:
        return None
    return Threshold(max(passed), min(flagged), f"bounded by the decisions at {name}")  # type: ignore[type-var]


def thumbnail_uri(path: Path, side: int = THUMBNAIL_SIDE) -> str | None:
    """A small JPEG data URI of an image file (orientation applied), or None when it cannot be decoded."""
    try:
        with Image.open(path) as im:
            if im.width * im.height > DEFAULT_MAX_PIXELS:
                return None
            im.draft("RGB", (side, side))  # JPEG: decode at 1/2..1/8 scale (in the DCT), the saving on photos
            rgb = Image.fromarray(load_image(im))
        rgb.thumbnail((side, side), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        rgb.save(buf, "JPEG", quality=THUMBNAIL_QUALITY, optimize=True)
    except (OSError, ValueError, ImageError, Image.DecompressionBombError):
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def thumbnails_for(paths: Sequence[Path], progress: bool = False) -> list[str | None]:
    """:func:`thumbnail_uri` of each path, decoded in threads (PIL releases the GIL while decoding)."""
    workers = min(8, os.cpu_count() or 1)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        results = pool.map(thumbnail_uri, paths)
        if progress and len(paths) > 50:
            results = tqdm.tqdm(results, total=len(paths), desc="thumbnails", unit="img", file=sys.stderr)
        return list(results)


def href_from_path(path: Path, page_dir: Path) -> str:
    """A URL to ``path`` relative to the page (opens from disk wherever the run folder is moved along with it);
    bytes are percent-encoded, so non-UTF-8 file names survive."""
    try:
        rel = os.path.relpath(path.absolute(), page_dir.absolute())
    except ValueError:  # another drive (Windows): only an absolute URL reaches it
        return path.absolute().as_uri()
    return quote(os.fsencode(Path(rel).as_posix()))


def histogram_svg(rows: Sequence[ImageScore], threshold: Threshold | None, bins: int = HISTOGRAM_BINS) -> str:
    """An inline SVG: stacked counts of flagged / not flagged probabilities per bin, the threshold marked."""
    flagged, passed = [0] * bins, [0] * bins
    for r in rows:
        if r.error or r.probability is None:
            continue
        b = min(bins - 1, max(0, int(r.probability * bins)))
        (flagged if r.decision else passed)[b] += 1
    w, h, left, bottom, top = 560, 170, 44, 24, 10
    tallest = max([f + p for f, p in zip(flagged, passed, strict=True)] + [1])
    bw, plot_h = (w - left - 8) / bins, h - bottom - top
    parts = [f'<svg class="hist" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" '
             'aria-label="histogram of probabilities">']
    for i, (f, p) in enumerate(zip(flagged, passed, strict=True)):
        x = left + i * bw
        for count, base, cls in ((p, 0, "pass"), (f, p, "flag")):
            if count:
                y0, y1 = h - bottom - plot_h * (base + count) / tallest, plot_h * count / tallest
                parts.append(f'<rect class="{cls}" x="{x:.1f}" y="{y0:.1f}" width="{bw - 1:.1f}" height="{y1:.1f}">'
                             f'<title>{i / bins:.3f}-{(i + 1) / bins:.3f}: {count}</title></rect>')
    for t in (0, 0.25, 0.5, 0.75, 1):
        x = left + t * bins * bw
        parts.append(f'<text x="{x:.1f}" y="{h - 8}" text-anchor="middle">{t:g}</text>')
    parts.append(f'<line class="axis" x1="{left}" y1="{h - bottom}" x2="{w - 8}" y2="{h - bottom}"/>'
                 f'<text x="{left - 4}" y="{top + 8}" text-anchor="end">{tallest}</text>'
                 f'<text x="{left - 4}" y="{h - bottom}" text-anchor="end">0</text>')
    if threshold is not None:
        x0, x1 = (left + v * bins * bw for v in (threshold.low, threshold.high))
        if x1 - x0 > 1:
            parts.append(f'<rect class="band" x="{x0:.1f}" y="{top}" width="{x1 - x0:.1f}" height="{plot_h}"/>')
        parts.append(f'<line class="threshold" x1="{x1:.1f}" y1="{top}" x2="{x1:.1f}" y2="{h - bottom}"/>'
                     f'<text class="threshold" x="{x1 + 3:.1f}" y="{top + 10}">threshold</text>')
    parts.append("</svg>")
    return "".join(parts)


def summary_of(rows: Sequence[ImageScore], missing: int, threshold: Threshold | None, thumbnails: int,
               heatmaps: int, heatmaps_embedded: int = 0) -> ReportSummary:
    scored = [r for r in rows if not r.error and r.probability is not None]
    points = Counter(r.operating_point for r in scored if r.operating_point)
    return ReportSummary(len(rows), len(scored), sum(bool(r.decision) for r in scored),
                         sum(bool(r.error) for r in rows), missing, dict(points.most_common()), threshold,
                         thumbnails, heatmaps, heatmaps_embedded)


class _Sources:
    """Where each image's file is, as the page links it: one directory listing and one relative path per folder
    (not a stat and a relpath per row: a run of 100,000 images lies in a few folders). Plain strings, not
    pathlib, which costs more than the rest of a row."""

    def __init__(self, root: Path, page_dir: Path):
        self.root, self.page_dir = str(root), page_dir
        self.listings: dict[str, set[str]] = {}
        self.prefixes: dict[str, int] = {}
        self.hrefs: list[str] = []

    def locate(self, image: str) -> tuple[str, str, bool]:
        """(folder, file name, whether the file is there) of a scores row's image."""
        parent, name = os.path.split(os.path.join(self.root, image))  # an absolute image stays as it is
        if parent not in self.listings:
            try:
                self.listings[parent] = set(os.listdir(parent or "."))
            except OSError:
                self.listings[parent] = set()
        return parent, name, name in self.listings[parent]

    def prefix(self, parent: str) -> int:
        if parent not in self.prefixes:
            self.prefixes[parent] = len(self.hrefs)
            self.hrefs.append(href_from_path(Path(parent), self.page_dir).rstrip("/") + "/")
        return self.prefixes[parent]

    def path(self, parent: str, name: str) -> Path:
        return Path(parent, name)


def _js_stem(base: str) -> str:
    k = base.rfind(".")
    return base[:k] if k > 0 else base


def _heat_ref(image: str, base: str, heat_names: set[str] | None) -> int | str:
    """0: no heatmap; 1: ``<stem>.heatmap.png`` the page derives from the link's file name; else the name."""
    if heat_names is None:
        return 0
    name = f"{Path(image).stem}.heatmap.png"
    if name not in heat_names:
        return 0
    quoted = quote(os.fsencode(name))
    return 1 if quoted == f"{_js_stem(base)}.heatmap.png" else quoted


def _num(x: float | None, digits: int) -> float | None:
    return None if x is None else round(x, digits)


def _packed(r: ImageScore, op: int, folder: int, name: str, heat_names: set[str] | None) -> list[Any]:
    base = quote(os.fsencode(name))
    plain = base == name and r.image.rsplit("/", 1)[-1] == name  # the page reads it off the image column
    return [r.image, _num(r.probability, 6), None if r.decision is None else int(r.decision), r.num_patches,
            r.error, op, folder, 0 if plain else base, NOT_EMBEDDED, _heat_ref(r.image, base, heat_names),
            _num(r.logit, 4), _num(r.latency_ms, 1), NOT_EMBEDDED]


def page_rows(rows: Sequence[ImageScore], order: Sequence[int], sources: _Sources, heat_names: set[str] | None,
              budget: int, progress: bool) -> tuple[list[list[Any]], list[str], list[str], int]:
    """The rows as the page's compact JSON arrays (:data:`spai.review.page.ROW_FIELDS`), the embedded
    thumbnails (the first ``budget`` rows whose file is there), the operating points the rows index, and how
    many source files are missing."""
    ops: dict[str, int] = {}
    out, want, missing = [], [], 0
    for i in order:
        r = rows[i]
        parent, name, present = sources.locate(r.image)
        missing += not present
        if present and len(want) < budget:
            want.append((len(out), sources.path(parent, name)))
        op = ops.setdefault(r.operating_point, len(ops)) if r.operating_point else -1
        out.append(_packed(r, op, sources.prefix(parent) if present else -1, name, heat_names))
    thumbs: list[str] = []
    for (row, _), uri in zip(want, thumbnails_for([p for _, p in want], progress), strict=True):
        out[row][8] = UNREADABLE if uri is None else len(thumbs)
        if uri is not None:
            thumbs.append(uri)
    return out, thumbs, list(ops), missing


def heatmap_uri(path: Path, quality: int = HEATMAP_QUALITY) -> str | None:
    """A heatmap PNG as a WebP data URI (a fraction of the PNG's bytes, text still legible), or None when it
    cannot be read: the page then says so in place of the image."""
    try:
        with Image.open(path) as im:
            buf = io.BytesIO()
            im.convert("RGB").save(buf, "WEBP", quality=quality, method=4)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    return "data:image/webp;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def embed_heatmaps(packed: list[list[Any]], heat_dir: Path, budget: int) -> list[str]:
    """Embed the heatmaps of the first ``budget`` rows (in page order) that have one; their rows point at them,
    the rest keep their link into ``heat_dir``. An unreadable heatmap stays linked (the page reports it)."""
    heats: list[str] = []
    for row in packed:
        if len(heats) >= budget:
            break
        if row[9] != 0:
            uri = heatmap_uri(heat_dir / f"{Path(row[0]).stem}.heatmap.png")
            if uri is not None:
                row[12] = len(heats)
                heats.append(uri)
    return heats


def _heatmap_names(heatmaps: str | os.PathLike | None) -> set[str] | None:
    if heatmaps is None:
        return None
    if not Path(heatmaps).is_dir():
        raise DataError(f"--heatmaps {heatmaps}: no such directory; pass the one `spai score --heatmaps` wrote.")
    return {n for n in os.listdir(heatmaps) if n.endswith(".heatmap.png")}


def html_report_from_scores(scores: str | os.PathLike, output: str | os.PathLike, *,
                            heatmaps: str | os.PathLike | None = None, root: str | os.PathLike | None = None,
                            thumbnails: int = DEFAULT_THUMBNAILS, embedded_heatmaps: int = DEFAULT_EMBEDDED_HEATMAPS,
                            threshold: float | None = None, title: str | None = None,
                            progress: bool = False) -> ReportSummary:
    """Write the review page of a scores file; image paths in it resolve against ``root`` (default: the
    current directory, where the scorer ran) and are linked relative to the page, as are the heatmaps beyond
    the first ``embedded_heatmaps``."""
    output = Path(output)
    if output.is_dir():
        raise DataError(f"-o {output} is a directory; name the page to write, e.g. {output / 'report.html'}.")
    rows = review_rows_from_scores(scores)
    heat_names = _heatmap_names(heatmaps)
    page_dir = output.absolute().parent
    sources = _Sources(Path(root) if root is not None else Path.cwd(), page_dir)
    packed, thumbs, ops, missing = page_rows(rows, review_order(rows), sources, heat_names, max(0, thumbnails),
                                             progress)
    heats = embed_heatmaps(packed, Path(heatmaps), max(0, embedded_heatmaps)) if heatmaps is not None else []
    mark = threshold_from_rows(rows, threshold)
    summary = summary_of(rows, missing, mark, len(thumbs), sum(r[9] != 0 for r in packed), len(heats))
    data = {"rows": packed, "ops": ops, "dirs": sources.hrefs, "thumbs": thumbs, "heats": heats,
            "heatDir": href_from_path(Path(heatmaps), page_dir).rstrip("/") + "/" if heatmaps is not None else ""}
    html = render_page(title or f"SPAI review: {Path(scores).name}", Path(scores).name, summary,
                       histogram_svg(rows, mark), data)
    with atomic_path(output) as tmp:
        tmp.write_text(html, encoding="utf-8")
    return summary
