"""Reviewing scores: the self-contained review page (:mod:`.report`, :mod:`.page`) and the attention heatmaps
(:mod:`.heatmaps`)."""
