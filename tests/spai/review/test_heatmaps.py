"""Heatmaps: the attention on the model's own patch grid, and a figure that explains itself at any image size."""

from __future__ import annotations

import time

import numpy as np
import pytest
from PIL import Image

from spai.model.patching import count_patches, patch_grid
from spai.review.heatmaps import (
    DISPLAY_MAX_SIDE,
    Verdict,
    attention_cells,
    attention_map,
    display_image,
    heatmap_figure,
    save_heatmap,
)


def _softmax_like(n: int, seed: int = 0) -> np.ndarray:
    a = np.random.default_rng(seed).random(n)
    return a / a.sum()


def _image(path, height: int, width: int):
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // width, y * 255 // height, (x // 8 + y // 8) % 2 * 255], -1).astype(np.uint8)
    Image.fromarray(rgb).save(path, quality=90)
    return path


def test_attention_map_geometry():
    assert attention_map(224, 448, np.full(5, 0.2)).shape == (224, 448)  # 1x2 grid -> five-crop
    heat = attention_map(448, 448, np.array([0.1, 0.2, 0.3, 0.4]))
    assert heat[0, 0] == pytest.approx(0.1) and heat[447, 447] == pytest.approx(0.4)
    assert attention_map(100, 60, np.arange(5.0)).shape == (100, 60)  # padded on both axes


def test_attention_map_rejects_wrong_length():
    with pytest.raises(ValueError):
        attention_map(448, 448, np.ones(3))


def test_five_crop_overlaps_are_averaged_and_remainders_left_uncovered():
    # 300 x 500: a 1 x 2 grid, so five crops: TL, TR, BL, BR, centre; they overlap in the middle
    a = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    heat = attention_map(300, 500, a)
    assert heat[0, 0] == pytest.approx(1.0) and heat[299, 499] == pytest.approx(4.0)
    # TL rows 0-223 cols 0-223, BL rows 76-299, centre rows 38-261 cols 138-361 (TR, BR: cols 276-499)
    assert heat[150, 150] == pytest.approx((1 + 3 + 5) / 3) and heat[150, 350] == pytest.approx((2 + 4 + 5) / 3)
    assert heat[150, 250] == pytest.approx(5.0)  # only the centre crop reaches the middle column
    assert heat[10, 250] == 0.0  # top middle: no crop covers it
    # 500 x 500: a 2 x 2 grid of 224 leaves 52 px at the right and bottom that no patch covers
    cells = attention_cells(patch_grid(500, 500), np.array([0.1, 0.2, 0.3, 0.4]))
    assert np.isnan(cells.values[-1, -1]) and cells.row_edges[-1] == 500
    assert attention_map(500, 500, np.array([0.1, 0.2, 0.3, 0.4]))[499, 499] == 0.0


def test_the_figure_says_probability_decision_operating_point_and_scale(tmp_path):
    rgb = np.asarray(Image.open(_image(tmp_path / "a.png", 300, 500)))
    fig = heatmap_figure(rgb, _softmax_like(5), "a.png", Verdict(0.8731, True, "fpr0.05", 0.62))
    ax, bar = fig.axes
    assert "0.873" in ax.get_title() and "FLAGGED" in ax.get_title() and "fpr0.05" in ax.get_title()
    assert "0.62" in ax.get_title()
    assert "attention weight" in bar.get_ylabel() and bar.get_ylim()[1] > 0
    assert "five-crop" in fig.get_suptitle() and "500 x 300" in fig.get_suptitle()
    assert sum(t.get_text().startswith("#") for t in ax.texts) == 5  # each crop labelled with its weight
    assert "not flagged" in heatmap_figure(rgb, _softmax_like(5), verdict=Verdict(0.1, False)).axes[0].get_title()
    assert heatmap_figure(rgb, _softmax_like(5)).axes[0].get_title() == "not scored"


def test_a_60x90_thumbnail_is_upscaled_legibly(tmp_path):
    path = _image(tmp_path / "thumb.jpg", 60, 90)
    rgb = np.asarray(Image.open(path))
    fig = heatmap_figure(rgb, _softmax_like(5), "thumb.jpg", Verdict(0.4, False, "p0.5"))
    fig.canvas.draw()
    (x0, y0), (x1, y1) = fig.axes[0].transData.transform([(0, 0), (90, 60)])
    assert abs(x1 - x0) >= 2.5 * 90 and abs(y1 - y0) >= 2.5 * 60  # each image pixel >= 2.5 x 2.5 figure pixels
    out = save_heatmap(path, _softmax_like(5), tmp_path / "thumb.heatmap.png", probability=0.4, decision=False)
    assert Image.open(out).width >= 800


def test_a_12_megapixel_photo_makes_a_display_sized_figure(tmp_path):
    path = _image(tmp_path / "photo.jpg", 3000, 4000)
    n = count_patches(3000, 4000)
    t0 = time.perf_counter()
    out = save_heatmap(path, _softmax_like(n), tmp_path / "photo.heatmap.png", probability=0.97, decision=True,
                       operating_point="fpr0.01")
    seconds = time.perf_counter() - t0
    with Image.open(out) as im:
        assert max(im.size) <= 1200
    assert out.stat().st_size < 1_500_000 and seconds < 30
    rgb = np.asarray(Image.open(path))
    assert max(display_image(rgb, patch_grid(3000, 4000)).shape[:2]) == DISPLAY_MAX_SIDE


def test_heatmaps_are_deterministic(tmp_path):
    path = _image(tmp_path / "d.png", 120, 300)
    a = _softmax_like(count_patches(120, 300))
    first = save_heatmap(path, a, tmp_path / "1.png", probability=0.5, decision=True, operating_point="p0.5")
    second = save_heatmap(path, a, tmp_path / "2.png", probability=0.5, decision=True, operating_point="p0.5")
    assert first.read_bytes() == second.read_bytes()
