"""Heatmaps a reviewer can read: the image, the attention over its patches on the model's own patch grid
(:func:`spai.model.patching.patch_grid`, shifted back from the reflect-padded frame; overlapping five-crop patches
averaged), a colour bar, and the probability, decision and operating point.

Presentation only, no torch: ``spai score --heatmaps`` and ``spai report`` draw with it. matplotlib (Agg, no
pyplot state) is imported when a figure is drawn. The attention is piecewise constant over the cells that the
patch edges cut the frame into, so it is drawn as a mesh of those cells over a display-sized copy of the image:
a 12 MP photograph never becomes a 12 MP figure, and a 60 x 90 thumbnail is upscaled with nearest-neighbour.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from spai.files import atomic_path
from spai.infer.images import decode_image
from spai.lazy import lazy_import
from spai.model.patching import PatchGrid, PatchSpec, pad_image, patch_grid

if TYPE_CHECKING:
    from matplotlib.figure import Figure

matplotlib = lazy_import("matplotlib")
mfigure = lazy_import("matplotlib.figure")
mpatches = lazy_import("matplotlib.patches")
patheffects = lazy_import("matplotlib.patheffects")

DISPLAY_MAX_SIDE = 1024  # pixels of the image as drawn: enough to see what a patch holds, small enough to ship
FIGURE_WIDTH_IN = 8.0
FIGURE_DPI = 110
LABELLED_PATCHES = 40  # up to this many patches, each is labelled with its attention weight
DEFAULT_SPEC = PatchSpec()


@dataclass(frozen=True)
class AttentionCells:
    """The attention as the model sees the image: ``values[i, j]`` is the mean weight of the patches covering the
    cell between ``row_edges[i:i + 2]`` and ``col_edges[j:j + 2]`` (NaN where none does: a remainder the grid
    drops). Edges are in original-image pixels; padding lies at negative coordinates and beyond the size."""

    row_edges: np.ndarray
    col_edges: np.ndarray
    values: np.ndarray


def _checked(grid: PatchGrid, attention: np.ndarray) -> np.ndarray:
    attention = np.asarray(attention, np.float64).reshape(-1)
    if len(attention) != grid.num_patches:
        raise ValueError(f"{len(attention)} attention weights for {grid.num_patches} patches of a "
                         f"{grid.width}x{grid.height} image")
    return attention


def attention_cells(grid: PatchGrid, attention: np.ndarray) -> AttentionCells:
    """Cut the padded frame at every patch edge and average the attention of the patches over each cell."""
    attention = _checked(grid, attention)
    s = grid.size
    tops = np.array([t for t, _ in grid.corners]) - grid.pad_top
    lefts = np.array([c for _, c in grid.corners]) - grid.pad_left
    frame_rows = (-grid.pad_top, grid.padded_height - grid.pad_top)
    frame_cols = (-grid.pad_left, grid.padded_width - grid.pad_left)
    row_edges = np.unique(np.concatenate([tops, tops + s, frame_rows]))
    col_edges = np.unique(np.concatenate([lefts, lefts + s, frame_cols]))
    total = np.zeros((len(row_edges) - 1, len(col_edges) - 1))
    count = np.zeros_like(total)
    for a, t, c in zip(attention, tops, lefts, strict=True):
        r0, r1 = np.searchsorted(row_edges, [t, t + s])
        c0, c1 = np.searchsorted(col_edges, [c, c + s])
        total[r0:r1, c0:c1] += a
        count[r0:r1, c0:c1] += 1
    values = np.divide(total, count, out=np.full_like(total, np.nan), where=count > 0)
    return AttentionCells(row_edges, col_edges, values)


def attention_map(height: int, width: int, attention: np.ndarray, spec: PatchSpec = DEFAULT_SPEC) -> np.ndarray:
    """H x W float map: each pixel = mean attention of the patches covering it (0 where none does)."""
    cells = attention_cells(patch_grid(height, width, spec), attention)
    rows = np.diff(np.clip(cells.row_edges, 0, height))
    cols = np.diff(np.clip(cells.col_edges, 0, width))
    heat = np.repeat(np.repeat(np.nan_to_num(cells.values, nan=0.0), rows, axis=0), cols, axis=1)
    return heat


@dataclass(frozen=True)
class Verdict:
    """What the caption says about the image: its probability, the decision and where it was taken."""

    probability: float | None = None
    decision: bool | None = None
    operating_point: str = ""
    threshold: float | None = None

    def caption(self) -> str:
        if self.probability is None:
            return "not scored"
        where = f" at {self.operating_point}" if self.operating_point else ""
        if self.threshold is not None:
            where += f" (threshold {self.threshold:.3g})"
        verdict = {True: "FLAGGED as AI-generated", False: "not flagged", None: "no decision"}[self.decision]
        return f"P(AI-generated) = {self.probability:.3f}  -  {verdict}{where}"


def display_image(rgb: np.ndarray, grid: PatchGrid, max_side: int = DISPLAY_MAX_SIDE) -> np.ndarray:
    """The padded frame the model cut (the image itself when unpadded), downscaled so neither side exceeds
    ``max_side``; never upscaled here (the figure upscales with nearest-neighbour, keeping pixels sharp)."""
    frame = np.ascontiguousarray(pad_image(rgb, grid))
    h, w = frame.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1:
        return frame
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    im = Image.fromarray(frame)
    factor = int(1 / scale)
    if factor >= 2:  # a box reduce first: cheap on a 12 MP frame, then an exact Lanczos to the target size
        im = im.reduce(factor)
    return np.asarray(im.resize(size, Image.Resampling.LANCZOS))


def _five_crop(grid: PatchGrid, spec: PatchSpec) -> bool:
    rows = (grid.padded_height - spec.size) // spec.stride + 1
    cols = (grid.padded_width - spec.size) // spec.stride + 1
    return rows * cols < spec.minimum_patches


def _figure_size(frame_h: int, frame_w: int) -> tuple[float, float]:
    aspect = min(max(frame_h / frame_w, 0.25), 1.6)  # panoramas and strips keep a readable figure
    return FIGURE_WIDTH_IN, 1.4 + FIGURE_WIDTH_IN * 0.82 * aspect


def _short(name: str, limit: int = 70) -> str:
    return name if len(name) <= limit else f"{name[:limit // 2 - 2]}...{name[-(limit // 2 - 1):]}"


def _draw_padding(ax: Any, grid: PatchGrid) -> None:
    """Dim the reflect padding (what the model saw beyond the image) and outline the image itself."""
    x0, y0 = -grid.pad_left, -grid.pad_top
    x1, y1 = grid.padded_width + x0, grid.padded_height + y0
    bands = [(x0, y0, x1 - x0, -y0), (x0, grid.height, x1 - x0, y1 - grid.height),
             (x0, 0, -x0, grid.height), (grid.width, 0, x1 - grid.width, grid.height)]
    for x, y, w, h in bands:
        if w > 0 and h > 0:
            ax.add_patch(mpatches.Rectangle((x, y), w, h, facecolor="white", alpha=0.55, edgecolor="none",
                                            zorder=3))
    ax.add_patch(mpatches.Rectangle((0, 0), grid.width, grid.height, fill=False, edgecolor="#00e5ff", lw=1.4,
                                    zorder=5))


def _draw_patches(ax: Any, grid: PatchGrid, attention: np.ndarray, five_crop: bool) -> None:
    """Outline every patch (five-crop: each crop its own style, overlaps visible); label small grids."""
    s, halo = grid.size, [patheffects.withStroke(linewidth=2.2, foreground="black")]
    anchors = [(0.03, 0.04, "left", "top"), (0.97, 0.04, "right", "top"), (0.03, 0.96, "left", "bottom"),
               (0.97, 0.96, "right", "bottom"), (0.5, 0.5, "center", "center")]
    styles = ["-", "--", "-.", ":", "-"]
    for i, ((t, c), a) in enumerate(zip(grid.corners, attention, strict=True)):
        x, y = c - grid.pad_left, t - grid.pad_top
        style = styles[i] if five_crop else "-"
        ax.add_patch(mpatches.Rectangle((x, y), s, s, fill=False, edgecolor="white",
                                        lw=1.2 if five_crop else 0.6, ls=style, alpha=0.9, zorder=4))
        if len(attention) > LABELLED_PATCHES:
            continue
        fx, fy, ha, va = anchors[i] if five_crop else (0.5, 0.5, "center", "center")
        label = f"#{i + 1} {a:.3f}" if five_crop else f"{a:.3f}"
        ax.text(x + fx * s, y + fy * s, label, ha=ha, va=va, fontsize=7.5, color="white", zorder=6,
                path_effects=halo)


def _draw_colour_bar(fig: Any, ax: Any, mesh: Any, attention: np.ndarray) -> None:
    bar = fig.colorbar(mesh, ax=ax, fraction=0.045, pad=0.02)
    label = "attention weight per patch"
    if abs(attention.sum() - 1) < 1e-3:  # softmax weights: mark what an even spread would give each patch
        uniform = 1 / len(attention)
        bar.ax.axhline(uniform, color="#00e5ff", lw=1.4, ls="--")
        label += f"  (dashed: even spread 1/N = {uniform:.3g})"
    bar.set_label(label, fontsize=8)
    bar.ax.tick_params(labelsize=7)


def heatmap_figure(rgb: np.ndarray, attention: np.ndarray, name: str = "", verdict: Verdict = Verdict(),
                   spec: PatchSpec = DEFAULT_SPEC, alpha: float = 0.5,
                   max_side: int = DISPLAY_MAX_SIDE) -> Figure:
    """The figure of one image: display-sized image, attention mesh on its patch grid, colour bar, caption."""
    grid = patch_grid(rgb.shape[0], rgb.shape[1], spec)
    attention = _checked(grid, attention)
    cells = attention_cells(grid, attention)
    five_crop = _five_crop(grid, spec)
    fig = mfigure.Figure(figsize=_figure_size(grid.padded_height, grid.padded_width), dpi=FIGURE_DPI,
                         layout="constrained")
    ax = fig.add_subplot()
    x0, y0 = -grid.pad_left, -grid.pad_top
    extent = (x0, x0 + grid.padded_width, y0 + grid.padded_height, y0)
    ax.imshow(display_image(rgb, grid, max_side), extent=extent, interpolation="nearest", zorder=1)
    cmap = matplotlib.colormaps["inferno"].with_extremes(bad=(0.55, 0.55, 0.55, 0.8))
    vmax = float(attention.max()) if attention.max() > 0 else 1.0
    mesh = ax.pcolormesh(cells.col_edges, cells.row_edges, np.ma.masked_invalid(cells.values), cmap=cmap,
                         vmin=0.0, vmax=vmax, alpha=alpha, shading="flat", zorder=2, antialiased=False)
    _draw_padding(ax, grid)
    _draw_patches(ax, grid, attention, five_crop)
    _draw_colour_bar(fig, ax, mesh, attention)
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    ax.tick_params(labelsize=7)
    colour = {True: "#c62828", False: "#2e7d32", None: "#444444"}[verdict.decision]
    ax.set_title(verdict.caption(), fontsize=10, color=colour, fontweight="bold")
    fig.suptitle(f"{_short(name)}  ({grid.width} x {grid.height} px, {grid.num_patches} patches"
                 f"{', five-crop' if five_crop else ''})", fontsize=9)
    fig.get_layout_engine().set(h_pad=0.06)  # type: ignore[union-attr]
    fig.supxlabel(_footnote(grid, spec, five_crop), fontsize=7, color="#555555")
    return fig


def _footnote(grid: PatchGrid, spec: PatchSpec, five_crop: bool) -> str:
    parts = [f"patch grid {spec.size} px, stride {spec.stride}"]
    if five_crop:
        parts.append(f"five-crop (fewer than {spec.minimum_patches} grid patches): 5 overlapping crops, "
                     "overlaps averaged")
    if grid.needs_padding:
        parts.append("dimmed: reflect padding, cyan: the image")
    if bool(np.isnan(attention_cells(grid, np.zeros(grid.num_patches)).values).any()):
        parts.append("grey: remainder no patch covers")
    return "; ".join(parts)


def save_heatmap(image_path: str | Path, attention: np.ndarray, out_path: str | Path, alpha: float = 0.5,
                 spec: PatchSpec = DEFAULT_SPEC, *, probability: float | None = None, decision: bool | None = None,
                 operating_point: str = "", threshold: float | None = None) -> Path:
    """Draw :func:`heatmap_figure` of an image file into a PNG (deterministic: no timestamp or version in it)."""
    rgb = decode_image(Path(image_path))
    fig = heatmap_figure(rgb, attention, Path(image_path).name,
                         Verdict(probability, decision, operating_point, threshold), spec, alpha)
    out = Path(out_path)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})
    return out
