"""The review page of :mod:`spai.review.report`: one HTML file, inline CSS and plain JS (no framework, no network), so it
opens from disk. The rows travel as one JSON block of compact arrays (:data:`ROW_FIELDS`); the script filters,
searches, sorts and pages them and builds only the rows of the page shown, which keeps a run of 100,000 images
responsive. Kept in Python strings (not a package data file) so every install ships it."""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Threshold:
    """Where the decisions were taken: a known threshold (``low == high``), or the interval the decisions allow
    (highest unflagged to lowest flagged probability) when only the operating point's name is in the file."""

    low: float
    high: float
    source: str

    def text(self) -> str:
        if self.low == self.high:
            return f"{self.low:.4g} ({self.source})"
        return f"between {self.low:.4g} and {self.high:.4g} ({self.source})"


@dataclass(frozen=True)
class ReportSummary:
    """What the page's header says, and what the command prints."""

    images: int
    scored: int
    flagged: int
    errors: int
    missing: int
    operating_points: dict[str, int]
    threshold: Threshold | None
    thumbnails: int
    heatmaps: int
    heatmaps_embedded: int = 0

    def line(self) -> str:
        points = ", ".join(f"{k} ({v})" for k, v in self.operating_points.items()) or "none"
        return (f"{self.images} images: {self.flagged} flagged of {self.scored} scored, {self.errors} errors, "
                f"{self.missing} source files missing; operating point {points}")


# The position of each field in a row array of the page's JSON (the script below reads them by these positions).
ROW_FIELDS = ("image", "probability", "decision", "num_patches", "error", "operating_point", "dir", "base",
              "thumbnail", "heatmap", "logit", "latency_ms", "heatmap_embedded")
# dir: index of the file's folder link in ``dirs`` (-1: the file is missing); base: the file's name as a link
# (0: the image column's last part, as is); thumbnail: index in ``thumbs`` (-1: none embedded, -2: undecodable);
# heatmap: 0 none, 1 ``<stem>.heatmap.png`` of base in ``heatDir``, else its file name; heatmap_embedded: index in
# ``heats`` (data URIs, set as an image's source only when its row is opened), -1 where the heatmap is linked

CSS = """
:root { --flag: #c62828; --pass: #2e7d32; --err: #e65100; --mute: #666; --line: #ddd; }
* { box-sizing: border-box; }
body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; margin: 0;
       color: #222; background: #fafafa; }
header, section { padding: 12px 20px; }
header { background: #263238; color: #fff; }
h1 { font-size: 20px; margin: 0 0 2px; }
header p { margin: 0; color: #cfd8dc; }
#summary { display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; background: #fff;
           border-bottom: 1px solid var(--line); }
dl.stats { display: grid; grid-template-columns: auto auto; gap: 4px 16px; margin: 0; }
dl.stats dt { color: var(--mute); } dl.stats dd { margin: 0; font-weight: 600; }
dd.flag { color: var(--flag); } dd.err { color: var(--err); }
figure { margin: 0; } figcaption { color: var(--mute); font-size: 12px; }
svg.hist text { font-size: 10px; fill: #555; }
svg.hist rect.flag { fill: var(--flag); } svg.hist rect.pass { fill: #78909c; }
svg.hist rect.band { fill: #ffb300; opacity: .25; } svg.hist line.axis { stroke: #999; }
svg.hist line.threshold { stroke: #ff6f00; stroke-width: 2; stroke-dasharray: 4 3; }
svg.hist text.threshold { fill: #ff6f00; font-weight: 600; paint-order: stroke; stroke: #fff; stroke-width: 3px; }
.controls { display: flex; flex-wrap: wrap; gap: 12px; align-items: center; margin-bottom: 10px; }
.controls input[type=search] { width: 16em; }
.pager button { min-width: 2.4em; } #page-info { margin: 0 8px; color: var(--mute); }
table { border-collapse: collapse; width: 100%; background: #fff; }
th, td { border-bottom: 1px solid var(--line); padding: 4px 8px; text-align: left; vertical-align: middle; }
th { background: #eceff1; position: sticky; top: 0; font-weight: 600; }
tr.row { cursor: pointer; } tr.row:hover { background: #f1f8ff; } tr.row.open { background: #e3f2fd; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.name { max-width: 32em; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
td.name .dir { color: var(--mute); }
td.thumb { width: 104px; height: 104px; text-align: center; }
td.thumb img { max-width: 96px; max-height: 96px; image-rendering: auto; display: block; margin: auto; }
.ph { width: 96px; height: 72px; margin: auto; display: flex; align-items: center; justify-content: center;
      font-size: 11px; color: #777; background: repeating-linear-gradient(45deg, #eee, #eee 6px, #e4e4e4 6px,
      #e4e4e4 12px); border: 1px dashed #bbb; text-align: center; }
.ph.missing { color: var(--err); border-color: var(--err); }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px; font-weight: 600;
         color: #fff; }
.badge.flag { background: var(--flag); } .badge.pass { background: var(--pass); }
.badge.err { background: var(--err); } .badge.none { background: #9e9e9e; }
.bar { display: inline-block; height: 6px; background: #cfd8dc; width: 60px; margin-left: 6px;
       vertical-align: middle; } .bar i { display: block; height: 100%; background: #546e7a; }
tr.error td.err { color: var(--err); } td.err { max-width: 28em; font-size: 12px; }
tr.detail td { background: #f5f9fc; padding: 12px; }
.detail-grid { display: flex; gap: 20px; flex-wrap: wrap; align-items: flex-start; }
.detail-grid img.heat { max-width: min(900px, 100%); border: 1px solid var(--line); background: #fff; }
.detail-grid dl { display: grid; grid-template-columns: auto auto; gap: 2px 12px; margin: 0; }
.detail-grid dt { color: var(--mute); } .detail-grid dd { margin: 0; word-break: break-all; }
.note { color: var(--mute); font-style: italic; }
#empty { padding: 20px; color: var(--mute); }
"""

SCRIPT = r"""
"use strict";
(function () {
  const D = JSON.parse(document.getElementById("data").textContent);
  const R = D.rows;
  const IMAGE = 0, P = 1, DEC = 2, PATCHES = 3, ERR = 4, OP = 5, DIR = 6, BASE = 7, THUMB = 8, HEAT = 9,
        LOGIT = 10, MS = 11, HEATDATA = 12;
  const $ = (id) => document.getElementById(id);
  const state = { view: [], page: 0, size: 50, open: -1, lower: null };
  const stats = { filterMs: 0, renderMs: 0 };
  window.spaiReport = stats;

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function keep(r, f) {
    switch (f) {
      case "flagged": return !r[ERR] && r[DEC] === 1;
      case "passed": return !r[ERR] && r[DEC] === 0;
      case "error": return !!r[ERR];
      case "missing": return r[DIR] < 0;
      default: return true;
    }
  }
  function byProbability(sign) {
    return (a, b) => {
      const pa = R[a][P], pb = R[b][P];
      if (pa === null || pb === null) return (pa === null) - (pb === null) || a - b;
      return sign * (pa - pb) || a - b;
    };
  }
  function recompute() {
    const t0 = performance.now();
    const f = $("filter").value, q = $("search").value.trim().toLowerCase();
    if (q && !state.lower) state.lower = R.map((r) => r[IMAGE].toLowerCase());
    const view = [];
    for (let i = 0; i < R.length; i++) {
      if (keep(R[i], f) && (!q || state.lower[i].includes(q))) view.push(i);
    }
    const s = $("sort").value;
    if (s === "high") view.sort(byProbability(-1));
    else if (s === "low") view.sort(byProbability(1));
    else if (s === "name") view.sort((a, b) => (R[a][IMAGE] < R[b][IMAGE] ? -1 : R[a][IMAGE] > R[b][IMAGE] ? 1 : 0));
    state.view = view; state.page = 0; state.open = -1;
    stats.filterMs = performance.now() - t0;
    render();
  }
  function pages() { return Math.max(1, Math.ceil(state.view.length / state.size)); }
  function base(r) { return r[BASE] === 0 ? r[IMAGE].slice(r[IMAGE].lastIndexOf("/") + 1) : r[BASE]; }
  function source(r) { return r[DIR] < 0 ? null : D.dirs[r[DIR]] + base(r); }
  function placeholder(text, cls) { return el("div", "ph" + (cls ? " " + cls : ""), text); }
  function thumb(r) {
    if (r[DIR] < 0) return placeholder("missing file", "missing");
    if (r[THUMB] === -2) return placeholder("cannot decode");
    const img = el("img");
    img.alt = "thumbnail";
    img.loading = "lazy";
    img.onerror = () => img.replaceWith(placeholder("cannot show"));
    img.src = r[THUMB] >= 0 ? D.thumbs[r[THUMB]] : source(r);
    return img;
  }
  function badge(r) {
    if (r[ERR]) return el("span", "badge err", "error");
    if (r[DEC] === 1) return el("span", "badge flag", "flagged");
    if (r[DEC] === 0) return el("span", "badge pass", "not flagged");
    return el("span", "badge none", "no decision");
  }
  function nameCell(r) {
    const td = el("td", "name"), path = r[IMAGE], k = path.lastIndexOf("/");
    td.title = path;
    if (k >= 0) td.append(el("span", "dir", path.slice(0, k + 1)));
    td.append(el("b", null, path.slice(k + 1)));
    return td;
  }
  function rowOf(i, rank) {
    const r = R[i];
    const tr = el("tr", "row " + (r[ERR] ? "error" : r[DEC] === 1 ? "flagged" : "passed") +
                  (r[DIR] < 0 ? " missing" : ""));
    tr.dataset.index = i;
    tr.append(el("td", "num", rank));
    const tc = el("td", "thumb"); tc.append(thumb(r)); tr.append(tc);
    tr.append(nameCell(r));
    const pc = el("td", "num prob", r[P] === null ? "\u2014" : r[P].toFixed(3));
    if (r[P] !== null) { const bar = el("span", "bar"), fill = el("i"); fill.style.width = (100 * r[P]) + "%";
                         bar.append(fill); pc.append(bar); }
    tr.append(pc);
    const dc = el("td"); dc.append(badge(r)); tr.append(dc);
    tr.append(el("td", "num", r[PATCHES] === null ? "\u2014" : r[PATCHES]));
    tr.append(el("td", "err", r[ERR]));
    tr.onclick = () => { state.open = state.open === i ? -1 : i; render(); };
    return tr;
  }
  function heatmapHref(r) {
    if (!r[HEAT]) return null;
    if (r[HEAT] !== 1) return D.heatDir + r[HEAT];
    const b = base(r), k = b.lastIndexOf(".");
    return D.heatDir + (k > 0 ? b.slice(0, k) : b) + ".heatmap.png";
  }
  function detailOf(i) {
    const r = R[i], tr = el("tr", "detail"), td = el("td"), grid = el("div", "detail-grid");
    td.colSpan = 7;
    const embedded = r[HEATDATA] >= 0, href = embedded ? D.heats[r[HEATDATA]] : heatmapHref(r);
    if (href) {
      const img = el("img", "heat"); img.alt = "heatmap"; img.src = href;
      img.onerror = () => img.replaceWith(el("p", "note", embedded ? "heatmap cannot be shown" :
        "heatmap file not found: " + decodeURI(href)));
      grid.append(img);
    } else {
      grid.append(el("p", "note", D.heatDir ? "no heatmap for this image" :
        "no heatmaps: score with `spai score --heatmaps DIR` and pass `--heatmaps DIR` to `spai report`"));
    }
    const dl = el("dl");
    const add = (k, v) => { dl.append(el("dt", null, k)); dl.append(el("dd", null, v)); };
    add("image", r[IMAGE]);
    add("probability", r[P] === null ? "\u2014" : r[P]);
    add("logit", r[LOGIT] === null ? "\u2014" : r[LOGIT]);
    add("operating point", r[OP] < 0 ? "\u2014" : D.ops[r[OP]]);
    add("patches", r[PATCHES] === null ? "\u2014" : r[PATCHES]);
    add("latency (ms)", r[MS] === null ? "\u2014" : r[MS]);
    if (r[ERR]) add("error", r[ERR]);
    const src = source(r);
    dl.append(el("dt", null, "file"));
    const dd = el("dd");
    if (src) { const a = el("a", null, "open original"); a.href = src; a.target = "_blank"; dd.append(a); }
    else dd.append(el("span", "note", "missing: the file is not where the scores say"));
    dl.append(dd);
    grid.append(dl); td.append(grid); tr.append(td);
    return tr;
  }
  function render() {
    const t0 = performance.now();
    const n = state.view.length, last = pages() - 1;
    state.page = Math.min(Math.max(0, state.page), last);
    const start = state.page * state.size, end = Math.min(n, start + state.size);
    const body = document.createDocumentFragment();
    for (let k = start; k < end; k++) {
      const i = state.view[k];
      body.append(rowOf(i, k + 1));
      if (state.open === i) body.append(detailOf(i));
    }
    const tbody = $("tbody");
    tbody.replaceChildren(body);
    $("empty").hidden = n > 0;
    $("page-info").textContent =
      n ? `page ${state.page + 1} of ${last + 1} \u00b7 rows ${start + 1}\u2013${end} of ${n}` : "no rows";
    $("first").disabled = $("prev").disabled = state.page === 0;
    $("next").disabled = $("last").disabled = state.page >= last;
    stats.renderMs = performance.now() - t0;
    stats.visible = n; stats.page = state.page; stats.pages = last + 1;
  }
  function go(p) { state.page = p; state.open = -1; render(); }
  let timer = 0;
  $("search").addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(recompute, 120); });
  $("filter").addEventListener("change", recompute);
  $("sort").addEventListener("change", recompute);
  $("page-size").addEventListener("change", () => { state.size = +$("page-size").value; go(0); });
  $("first").onclick = () => go(0);
  $("prev").onclick = () => go(state.page - 1);
  $("next").onclick = () => go(state.page + 1);
  $("last").onclick = () => go(pages() - 1);
  document.addEventListener("keydown", (e) => {
    if (e.target instanceof HTMLInputElement || e.target instanceof HTMLSelectElement) return;
    if (e.key === "ArrowRight") go(state.page + 1);
    else if (e.key === "ArrowLeft") go(state.page - 1);
    else if (e.key === "/") { e.preventDefault(); $("search").focus(); }
  });
  state.size = +$("page-size").value;
  recompute();
  performance.mark("rows-rendered");
  document.body.dataset.ready = "1";
})();
"""


def _stat(label: str, value: Any, cls: str = "") -> str:
    return f'<dt>{html.escape(label)}</dt><dd{f" class={cls!r}" if cls else ""}>{html.escape(str(value))}</dd>'


def _heatmaps_text(summary: ReportSummary) -> str:
    if not summary.heatmaps or summary.heatmaps_embedded == summary.heatmaps:
        return f"{summary.heatmaps}{' (all embedded)' if summary.heatmaps else ''}"
    return f"{summary.heatmaps} ({summary.heatmaps_embedded} embedded, the rest linked)"


def summary_html(summary: ReportSummary) -> str:
    """The header's numbers, static (readable before the script runs)."""
    share = f" ({100 * summary.flagged / summary.scored:.1f}% of scored)" if summary.scored else ""
    points = ", ".join(f"{k} ({v} images)" if len(summary.operating_points) > 1 else k
                       for k, v in summary.operating_points.items()) or "none"
    parts = [_stat("images", summary.images), _stat("flagged", f"{summary.flagged}{share}", "flag"),
             _stat("not flagged", summary.scored - summary.flagged), _stat("errors", summary.errors, "err"),
             _stat("source files missing", summary.missing, "err" if summary.missing else ""),
             _stat("operating point", points),
             _stat("threshold", summary.threshold.text() if summary.threshold else "not known (pass --threshold)"),
             _stat("thumbnails embedded", summary.thumbnails),
             _stat("heatmaps", _heatmaps_text(summary))]
    return f'<dl class="stats">{"".join(parts)}</dl>'


def _json_for_script(data: dict[str, Any]) -> str:
    # ASCII escapes: lone surrogates (non-UTF-8 file names) stay valid; no '<' can close the script element
    return json.dumps(data, ensure_ascii=True, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")


def _controls(summary: ReportSummary) -> str:
    filters = [("all", f"all ({summary.images})"), ("flagged", f"flagged ({summary.flagged})"),
               ("passed", f"not flagged ({summary.scored - summary.flagged})"),
               ("error", f"errors ({summary.errors})"), ("missing", f"missing files ({summary.missing})")]
    options = "".join(f'<option value="{v}">{html.escape(t)}</option>' for v, t in filters)
    return (f'<div class="controls"><label>Show <select id="filter">{options}</select></label>'
            '<label>Search <input id="search" type="search" placeholder="file name (press /)"></label>'
            '<label>Sort <select id="sort"><option value="review">flagged first, most probable first</option>'
            '<option value="high">probability, high to low</option><option value="low">probability, low to high'
            '</option><option value="name">name</option></select></label>'
            '<label>Per page <select id="page-size"><option>25</option><option selected>50</option>'
            '<option>100</option><option>200</option></select></label>'
            '<span class="pager"><button id="first" title="first page">&laquo;</button>'
            '<button id="prev" title="previous page (left arrow)">&lsaquo; prev</button><span id="page-info"></span>'
            '<button id="next" title="next page (right arrow)">next &rsaquo;</button>'
            '<button id="last" title="last page">&raquo;</button></span></div>')


def render_page(title: str, source: str, summary: ReportSummary, histogram: str, data: dict[str, Any]) -> str:
    """The whole page: static summary and histogram, the rows' JSON, the script that shows them."""
    caption = ("probabilities of the scored images (grey: not flagged, red: flagged)"
               + ("; dashed line: the threshold" if summary.threshold else ""))
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>{html.escape(title)}</title><style>{CSS}</style></head><body>'
            f'<header><h1>{html.escape(title)}</h1><p>scores: {html.escape(source)} &middot; '
            f'{html.escape(summary.line())}</p></header>'
            f'<section id="summary">{summary_html(summary)}<figure>{histogram}'
            f'<figcaption>{html.escape(caption)}</figcaption></figure></section>'
            f'<section id="review">{_controls(summary)}'
            '<table id="rows"><thead><tr><th>#</th><th>image</th><th>file</th><th>P(AI)</th><th>decision</th>'
            '<th>patches</th><th>error</th></tr></thead><tbody id="tbody"></tbody></table>'
            '<p id="empty" hidden>no rows match</p>'
            '<noscript><p>This page needs JavaScript to list the images.</p></noscript></section>'
            f'<script type="application/json" id="data">{_json_for_script(data)}</script>'
            f'<script>{SCRIPT}</script></body></html>\n')
