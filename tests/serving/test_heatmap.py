"""Heatmap geometry: the patch grid of spai.patching, shifted back to the original image."""

from __future__ import annotations

import numpy as np
import pytest

from serving.heatmap import attention_map


def test_attention_map_geometry():
    assert attention_map(224, 448, np.full(5, 0.2)).shape == (224, 448)  # 1x2 grid -> five-crop
    heat = attention_map(448, 448, np.array([0.1, 0.2, 0.3, 0.4]))
    assert heat[0, 0] == pytest.approx(0.1) and heat[447, 447] == pytest.approx(0.4)
    assert attention_map(100, 60, np.arange(5.0)).shape == (100, 60)  # padded on both axes


def test_attention_map_rejects_wrong_length():
    with pytest.raises(ValueError):
        attention_map(448, 448, np.ones(3))
