"""The model with its scoring methods: :class:`SPAIDetector` (what ``spai.create_model`` returns) adds
``score_images`` / ``score`` to :class:`spai.model.nn.spai_model.SPAIModel` through the one inference path, so
that the ``nn.Module`` itself knows nothing of runners, routes or scorers (Ultralytics keeps ``nn/`` free of
prediction the same way)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from spai.infer.images import ImageSource
from spai.infer.job import ScoringJob, open_scorer
from spai.infer.prepare import InputLimits
from spai.infer.scores import ImageScore
from spai.model import factory
from spai.model.nn.spai_model import SPAIModel


class SPAIDetector(SPAIModel):
    """A :class:`SPAIModel` (same parameters, same checkpoints) that scores images of any size."""

    @torch.no_grad()
    def score_images(self, images: Sequence[ImageSource], chunk_size: int | None = None,
                     operating_point: str | None = None, *, backend: str | None = None, precision: str = "fp32",
                     onnx_dir: str | None = None, **limits: Any) -> list[ImageScore]:
        """Score images of any size (:meth:`spai.infer.scorer.Scorer.score_images`): patches of all images go
        through the encoder ``chunk_size`` at a time, then padded aggregator calls; probabilities and decisions (at
        ``operating_point``, default the calibration's) come from :attr:`calibration`. The route is picked by name
        (:mod:`spai.infer.routes`): ``backend`` torch | ort (ort needs ``onnx_dir``, a ``spai export`` folder),
        ``precision`` fp32 | bf16 | int8 | auto (the fastest route that passed its parity gate for this model on
        this CPU; logged with why); on a GPU fp32 | fp16 | bf16 (autocast, where it passed) | auto. ``limits``:
        ``max_pixels`` / ``max_bytes`` for decoding. Every image is validated first; a bad one raises
        :class:`spai.ImageError`."""
        job = ScoringJob(self.cfg.MODEL.NAME, None, onnx_dir, backend, precision, self.device.type, chunk_size,
                         InputLimits(**limits), operating_point)
        with open_scorer(job, model=self) as scorer:
            return scorer.score_images(images, operating_point)

    def score(self, images: Sequence[ImageSource], chunk_size: int | None = None, **options: Any) -> np.ndarray:
        """Probabilities (1 = AI-generated; calibrated when the checkpoint is) for images of any size
        (``options``: those of :meth:`score_images`)."""
        return np.array([s.probability for s in self.score_images(images, chunk_size, **options)],
                        dtype=np.float32)


def create_model(name_or_cfg: str | os.PathLike | Mapping[str, Any] | None = None,
                 checkpoint: str | os.PathLike | None = None, *, pretrained: str | os.PathLike | None = None,
                 overrides: Iterable[tuple[str, Any]] = (), device: str | torch.device = "cpu") -> SPAIDetector:
    """``spai.create_model``: :func:`spai.model.factory.create_model` building a :class:`SPAIDetector`."""
    return factory.create_model(name_or_cfg, checkpoint, pretrained=pretrained, overrides=overrides, device=device,
                                cls=SPAIDetector)


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu",
                    name_or_cfg: str | os.PathLike | Mapping[str, Any] | None = None,
                    overrides: Iterable[tuple[str, Any]] = ()) -> tuple[SPAIDetector, dict[str, Any]]:
    """``spai.load_checkpoint``: :func:`spai.model.factory.load_checkpoint` building a :class:`SPAIDetector`."""
    return factory.load_checkpoint(path, device, name_or_cfg, overrides, cls=SPAIDetector)
