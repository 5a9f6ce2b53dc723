"""The heatmaps moved to spai.review.heatmaps; ``spai score --heatmaps`` still draws them through this name."""

from __future__ import annotations

import numpy as np
from PIL import Image

from spai.infer.scores import ImageScore
from spai.model.patching import count_patches
from spai.review.heatmaps import save_heatmap


def test_spai_score_heatmaps_still_draw_through_serving_heatmap(tmp_path):
    from serving.heatmap import attention_map, save_heatmap
    from spai_cli.score import write_heatmaps

    assert attention_map(448, 448, np.array([0.1, 0.2, 0.3, 0.4]))[0, 0] == 0.1
    path = tmp_path / "img.png"
    Image.fromarray(np.full((300, 500, 3), 128, np.uint8)).save(path)
    n = count_patches(300, 500)
    rows = [ImageScore(str(path), 0.9, 2.0, n, attention=np.full(n, 1 / n), decision=True, operating_point="p0.5"),
            ImageScore(str(tmp_path / "bad.png"), error="cannot decode")]
    assert write_heatmaps(rows, tmp_path / "heat") == 1
    assert Image.open(tmp_path / "heat" / "img.heatmap.png").width >= 800
    assert save_heatmap(path, np.full(n, 1 / n), tmp_path / "direct.png").exists()


def test_spai_score_heatmaps_carry_the_verdict(tmp_path):
    from spai_cli.score import write_heatmap

    path = tmp_path / "img.png"
    Image.fromarray(np.full((300, 500, 3), 128, np.uint8)).save(path)
    n = count_patches(300, 500)
    attention = np.full(n, 1 / n)
    row = ImageScore(str(path), 0.9, 2.0, n, attention=attention, decision=True, operating_point="fpr0.05")
    assert write_heatmap(row, tmp_path / "heat")
    expected = save_heatmap(path, attention, tmp_path / "expected.png", probability=0.9, decision=True,
                            operating_point="fpr0.05")  # deterministic bytes: equal only with the same caption
    assert (tmp_path / "heat" / "img.heatmap.png").read_bytes() == expected.read_bytes()
