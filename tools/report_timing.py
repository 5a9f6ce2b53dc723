"""Size and speed of the review page (``spai report``) at a given number of rows, in headless Chromium:
``.venv/bin/python tools/report_timing.py [ROWS ...] [--heatmaps N]`` (default 1000 100000).

A synthetic run per size (tests/spai/review/report_support.py: up to 1,000 distinct images, the other names hard links
to them, 0.5% error rows), the page built with the defaults of ``spai report`` (1,000 thumbnails embedded; with
``--heatmaps N``, N heatmap PNGs written and passed, of which the default 100 are embedded). Prints one JSON
line per size: build seconds, page MiB, the browser's load and first-rows times, and the latency from a filter,
a search, a page turn and a re-sort to the next painted frame. A measurement tool, not a test: the numbers
depend on the machine; the browser tests only check behaviour.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT.parent / "shared" / "data" / "samples"  # real photos, where this checkout has them

NAVIGATION = """() => {
  const n = performance.getEntriesByType("navigation")[0];
  return {dom_content_loaded_ms: Math.round(n.domContentLoadedEventEnd),
          load_event_ms: Math.round(n.loadEventEnd),
          first_rows_ms: Math.round(performance.getEntriesByName("rows-rendered")[0].startTime)};
}"""
# Milliseconds from an action (a control set to a value, or a button clicked) to the next painted frame.
TIMED = """(id, value) => new Promise((resolve) => {
  const t = performance.now(), e = document.getElementById(id);
  if (value === null) e.click(); else { e.value = value; e.dispatchEvent(new Event("change")); }
  requestAnimationFrame(() => setTimeout(() => resolve(Math.round(performance.now() - t)), 0));
})"""
SEARCH_WAIT = "() => new Promise((r) => setTimeout(r, 300))"  # past the search box's debounce


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "tests" / "spai" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def _write_heatmaps(run: Path, scores: Path, count: int) -> Path:
    """Heatmaps of the first ``count`` rows (uniform attention: only their size and drawing time matter)."""
    import csv

    import numpy as np

    from spai.infer.images import decode_image
    from spai.model.patching import count_patches
    from spai.review.heatmaps import save_heatmap

    out = run / "heatmaps"
    with open(scores, newline="", encoding="utf-8") as f:
        names = [r["image"] for r in csv.DictReader(f)][:count]
    for name in names:
        h, w = decode_image(run / name).shape[:2]
        n = count_patches(h, w)
        save_heatmap(run / name, np.full(n, 1 / n), out / f"{Path(name).stem}.heatmap.png", probability=0.9,
                     decision=True, operating_point="fpr0.05")
    return out


def _browser_figures(chromium: ModuleType, page_path: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with chromium.Chromium() as browser:
        page = browser.page()
        out["load_s"] = round(page.navigate(page_path.as_uri()), 3)
        out.update(page.call(NAVIGATION))
        out["filter_flagged_ms"] = page.call(TIMED, "filter", "flagged")
        page.type_into("#search", "photo_0001")
        page.call(SEARCH_WAIT)
        work = page.evaluate("window.spaiReport")
        out["search_work_ms"] = round(work["filterMs"] + work["renderMs"], 1)  # the script's own time
        out["search_matches"] = work["visible"]
        page.call("() => { document.getElementById('search').value = ''; }")
        page.call(TIMED, "filter", "all")
        out["next_page_ms"] = page.call(TIMED, "next", None)
        out["last_page_ms"] = page.call(TIMED, "last", None)
        out["sort_low_ms"] = page.call(TIMED, "sort", "low")
        out["rows_in_dom"] = page.evaluate("document.querySelectorAll('#tbody tr.row').length")
        out["js_errors"] = page.errors
    return out


def measure(rows: int, heatmaps: int = 0, images: int = 1000) -> dict[str, Any]:
    """Build the page of a synthetic run of ``rows`` rows and time it in Chromium."""
    from spai.infer.images import list_images
    from spai.review.report import html_report_from_scores

    support, chromium = _load("report_support"), _load("chromium")
    pool = list_images(SAMPLES) if SAMPLES.is_dir() else None
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp)
        scores = support.synthetic_run(run, rows, min(images, rows), pool)
        heat_dir = _write_heatmaps(run, scores, heatmaps) if heatmaps else None
        cwd = os.getcwd()
        os.chdir(run)
        try:
            t0 = time.perf_counter()
            summary = html_report_from_scores(scores, run / "report.html", heatmaps=heat_dir)
            build_s = time.perf_counter() - t0
        finally:
            os.chdir(cwd)
        out: dict[str, Any] = {"rows": rows, "photos": "shared samples" if pool else "generated",
                               "thumbnails": summary.thumbnails, "heatmaps_embedded": summary.heatmaps_embedded,
                               "build_s": round(build_s, 2),
                               "size_mib": round((run / "report.html").stat().st_size / 2**20, 2)}
        out.update(_browser_figures(chromium, run / "report.html"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("rows", nargs="*", type=int, default=[1000, 100_000])
    parser.add_argument("--heatmaps", type=int, default=0, metavar="N", help="write and pass N heatmaps")
    args = parser.parse_args()
    for n in args.rows:
        print(json.dumps(measure(n, args.heatmaps)), flush=True)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
