"""Heatmaps moved to the library (:mod:`spai.review.heatmaps`: they are presentation, drawn by ``spai score`` and
``spai report``); this name stays for the callers that still import it from here."""

from __future__ import annotations

from spai.review.heatmaps import attention_map, save_heatmap

__all__ = ["attention_map", "save_heatmap"]
