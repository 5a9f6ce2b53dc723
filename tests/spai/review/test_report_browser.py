"""The review page in a real browser (Debian's headless Chromium through its DevTools protocol): it loads without
script errors and shows content, the decision filter, name search and paging work, errors and missing images
render as such, heatmaps (embedded or linked) appear only when a row is opened, and a page of 100,000 rows builds
only the rows shown (its load and interaction times: tools/report_timing.py, not a test)."""

from __future__ import annotations

import importlib.util
import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from spai.model.patching import count_patches
from spai.review.heatmaps import save_heatmap
from spai.review.report import html_report_from_scores

_spec = importlib.util.spec_from_file_location("spai_report_support", Path(__file__).with_name("report_support.py"))
support = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
_spec.loader.exec_module(support)  # type: ignore[union-attr]
chromium = support.load_chromium()

pytestmark = pytest.mark.skipif(not chromium.CHROMIUM.exists(),
                                reason="no /usr/bin/chromium: install Debian's (apt-get install -y chromium); "
                                       ".ci/run does it where it runs as root")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """60 images (heatmaps for the first three), an undecodable file and a failed row (both errors), a file deleted
    after scoring; the page embeds 10 thumbnails and 2 heatmaps, so later rows show their original files and the
    third heatmap through relative links."""
    root = tmp_path_factory.mktemp("review_run")
    names = [os.path.relpath(p, root) for p in support.write_images(root / "photos", 60)]
    (root / "photos" / "batch_000" / "broken.jpg").write_bytes(b"not a jpeg")
    names += ["photos/batch_000/broken.jpg", "photos/gone/deleted.jpg", "photos/gone/failed.jpg"]
    rows = support.scores_records(names, errors=3)  # broken.jpg and failed.jpg fail; deleted.jpg scored, then gone
    rows[names.index("photos/gone/deleted.jpg")].update(probability="0.999", decision=1, error="")
    (root / "heatmaps").mkdir()
    for name in names[:3]:
        n = count_patches(240, 320)
        save_heatmap(root / name, np.full(n, 1 / n), root / "heatmaps" / f"{Path(name).stem}.heatmap.png",
                     probability=0.5, decision=True, operating_point="fpr0.05")
    scores = support.write_scores_csv(rows, root / "scores.csv")
    out = root / "site" / "report.html"
    summary = html_report_from_scores(scores, out, heatmaps=root / "heatmaps", root=root, thumbnails=10,
                                      embedded_heatmaps=2)
    return out, summary, rows


@pytest.fixture(scope="module")
def page(run):
    with chromium.Chromium() as browser:
        tab = browser.page()
        tab.navigate(run[0].as_uri())
        yield tab


def _rows(page) -> list[dict]:
    return page.evaluate("[...document.querySelectorAll('#tbody tr.row')].map(tr => ({cls: tr.className, "
                         "name: tr.querySelector('td.name').title, rank: +tr.cells[0].textContent, "
                         "badge: tr.querySelector('.badge').textContent, err: tr.querySelector('td.err')"
                         ".textContent, ph: tr.querySelector('.ph') && tr.querySelector('.ph').textContent}))")


def _reset(page) -> None:
    page.evaluate("document.getElementById('search').value = ''")
    page.choose("#filter", "all")
    page.choose("#page-size", "25")
    page.settle()


def test_loads_without_errors_and_the_screenshot_has_content(page, run):
    assert page.evaluate("document.body.dataset.ready") == "1"
    assert page.errors == []
    assert len(_rows(page)) == 50  # the default page size
    shot = np.asarray(Image.open(io.BytesIO(page.screenshot())).convert("L"), np.float64)
    assert shot.std() > 30 and (shot < 235).mean() > 0.15  # not blank: header, histogram, thumbnails, badges
    text = page.evaluate("document.getElementById('summary').innerText")
    assert f"{run[1].flagged}" in text and "fpr0.05" in text and "threshold" in text


def test_filter_by_decision_changes_the_visible_rows(page, run):
    _reset(page)
    page.choose("#filter", "flagged")
    page.settle()
    flagged = _rows(page)
    assert len(flagged) == min(25, run[1].flagged) and all(r["badge"] == "flagged" for r in flagged)
    assert page.evaluate("window.spaiReport.visible") == run[1].flagged
    page.choose("#filter", "passed")
    page.settle()
    assert {r["badge"] for r in _rows(page)} == {"not flagged"}


def test_search_by_name(page):
    _reset(page)
    page.type_into("#search", "PHOTO_00001")  # case-insensitive: photo_000010 .. photo_000019
    page.evaluate("new Promise(r => setTimeout(r, 400))")  # the search box waits for typing to pause
    page.settle()
    names = sorted(r["name"] for r in _rows(page))
    assert names == sorted(f"photos/batch_001/photo_{i:06d}.jpg" for i in range(10, 20))


def test_paging_moves_forwards_and_back(page):
    _reset(page)
    assert "page 1 of 3" in page.evaluate("document.getElementById('page-info').textContent")
    page.click("#next")
    page.settle()
    second = _rows(page)
    assert second[0]["rank"] == 26 and "page 2 of 3" in page.evaluate(
        "document.getElementById('page-info').textContent")
    page.click("#last")
    page.settle()
    assert [r["rank"] for r in _rows(page)] == list(range(51, 64))
    page.click("#prev")
    page.settle()
    assert _rows(page) == second and page.errors == []


def test_errors_and_missing_images_render_as_such(page):
    _reset(page)
    page.choose("#filter", "error")
    page.settle()
    errors = _rows(page)
    assert len(errors) == 2 and all(r["badge"] == "error" and "not a recognised image" in r["err"] for r in errors)
    page.choose("#filter", "missing")
    page.settle()
    missing = {r["name"]: r for r in _rows(page)}
    assert set(missing) == {"photos/gone/deleted.jpg", "photos/gone/failed.jpg"}
    assert all(r["ph"] == "missing file" for r in missing.values())
    page.type_into("#search", "broken")
    page.choose("#filter", "all")
    page.settle()
    (broken,) = _rows(page)
    assert broken["ph"] == "cannot show" and broken["badge"] == "error"  # past the 10 embedded: the browser's
    # own load of the original failed, and the page put a placeholder in place of a broken image


def test_thumbnails_and_linked_originals_all_load(page):
    _reset(page)
    page.choose("#page-size", "100")
    page.evaluate("new Promise(r => { const imgs = [...document.querySelectorAll('#tbody img')]; "
                  "imgs.forEach(i => { i.loading = 'eager'; }); const wait = () => imgs.every(i => i.complete) ? "
                  "r() : setTimeout(wait, 50); wait(); })")
    loaded = page.evaluate("[...document.querySelectorAll('#tbody img')].map(i => [i.src.slice(0, 5), "
                           "i.naturalWidth])")
    assert {src for src, _ in loaded} == {"data:", "file:"}  # 10 embedded, the rest the originals via ../photos
    assert len(loaded) == 60 and all(width > 0 for _, width in loaded)
    assert page.evaluate("document.querySelectorAll('#tbody .ph').length") == 3  # deleted, failed, broken


OPENED_HEATMAP = """() => new Promise((resolve) => {
  const wait = () => {
    const i = document.querySelector("img.heat");
    if (i && i.complete) resolve([i.src.slice(0, 16), i.naturalWidth]); else setTimeout(wait, 50);
  };
  wait();
})"""


def test_heatmaps_appear_when_their_row_is_opened_embedded_or_linked(page, run):
    seen = []
    for i in range(3):  # the first three images have heatmaps; the page embeds two of them
        _reset(page)
        page.type_into("#search", f"photo_{i:06d}")
        page.call("() => new Promise((r) => setTimeout(r, 400))")
        assert page.evaluate("document.querySelectorAll('img.heat').length") == 0  # on demand: not before
        page.click("#tbody tr.row")
        seen.append(page.call(OPENED_HEATMAP))
        page.click("#tbody tr.row")  # closes it again
        assert page.evaluate("document.querySelectorAll('tr.detail').length") == 0
    assert sorted(src[:5] for src, _ in seen) == ["data:", "data:", "file:"]  # 2 embedded, 1 linked
    assert all(src.startswith("data:image/webp") for src, _ in seen if src.startswith("data:"))
    assert all(width >= 800 for _, width in seen) and page.errors == []


def test_a_row_without_a_heatmap_says_so(page):
    _reset(page)
    page.type_into("#search", "photo_000010")
    page.call("() => new Promise((r) => setTimeout(r, 400))")
    page.click("#tbody tr.row")
    assert page.evaluate("document.querySelector('tr.detail .note').textContent") == "no heatmap for this image"


def test_100000_rows_build_only_the_page_shown(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    names = [f"photos/batch_{i // 1000:03d}/photo_{i:06d}.jpg" for i in range(100_000)]
    support.write_scores_csv(support.scores_records(names, errors=500), tmp_path / "scores.csv")
    html_report_from_scores("scores.csv", "report.html", thumbnails=0)
    with chromium.Chromium() as browser:
        tab = browser.page()
        tab.navigate((tmp_path / "report.html").as_uri())
        assert tab.evaluate("document.querySelectorAll('#tbody tr').length") == 50
        assert "of 2000" in tab.evaluate("document.getElementById('page-info').textContent")
        tab.choose("#filter", "error")
        tab.settle()
        tab.click("#next")
        tab.settle()
        assert tab.evaluate("[window.spaiReport.visible, window.spaiReport.page]") == [500, 1]
        assert tab.evaluate("document.querySelectorAll('#tbody tr.row.error').length") == 50 and tab.errors == []
