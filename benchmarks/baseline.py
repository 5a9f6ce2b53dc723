"""The comparison baseline: upstream SPAI's inference path, written straightforwardly and eagerly.

What differs from :meth:`spai.SPAIModel.encode_patches` is only how the backbone features are produced:

* the spectral split uses ``torch.fft`` (``fft2`` / ``fftshift`` / masked ``ifft2``, upstream ``filters.py``);
* the backbone runs THREE separate passes per patch batch (original, low, high), the intermediate tokens are
  captured by forward hooks on every block's ``ln_2`` (upstream ``spai/models/vision_transformer.py``);
* a FOURTH pass of the CLIP tower produces the semantic vector, as the fusion fork does;
* fp32 throughout, no stacking of the views, no fused matmul filter.

The weights are the model's own modules (backbone, FRE, head), so speed ratios compare the same network.
"""

from __future__ import annotations

import torch
from torch import nn

from spai.models.spai_model import SPAIModel
from spai.models.spectral import filter_frequencies_fft


class UpstreamBaseline:
    """Upstream-style eager patch encoder sharing ``model``'s weights; call it like ``encode_patches``."""

    def __init__(self, model: SPAIModel) -> None:
        self.mfvit = model.mfvit
        self.visual: nn.Module = model.mfvit.vit.clip.visual
        self.layers = list(model.mfvit.vit.layers)
        self._captured: list[torch.Tensor] = []
        self._hooks = [block.ln_2.register_forward_hook(self._capture)
                       for block in self.visual.transformer.resblocks]
        self._capturing = False

    def _capture(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        """Forward hook on ``ln_2``: keep the block's normalised tokens while a feature pass runs."""
        if self._capturing:
            self._captured.append(output)

    def close(self) -> None:
        """Remove the hooks from the shared backbone."""
        for handle in self._hooks:
            handle.remove()
        self._hooks = []

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mfvit.mean) / self.mfvit.std

    def intermediate_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """One hooked backbone pass -> B x len(layers) x tokens x width (``ln_2`` outputs, CLS dropped)."""
        self._captured, self._capturing = [], True
        try:
            self.visual(x)
        finally:
            self._capturing = False
        taps = [self._captured[i] for i in self.layers]
        if not getattr(self.visual.transformer, "batch_first", True):
            taps = [t.transpose(0, 1) for t in taps]
        return torch.stack([t[:, 1:] for t in taps], dim=1)

    @torch.no_grad()
    def __call__(self, patches: torch.Tensor) -> torch.Tensor:
        """N x 3 x 224 x 224 floats in [0, 1] -> N x D patch vectors, upstream's way."""
        low, high = filter_frequencies_fft(patches, self.mfvit.frequencies_mask)
        orig_tokens = self.intermediate_tokens(self._normalise(patches))
        low_tokens = self.intermediate_tokens(self._normalise(low))
        high_tokens = self.intermediate_tokens(self._normalise(high))
        fre = self.mfvit.features_processor
        semantic = self.visual(self._normalise(patches)) if fre.uses_semantics else None  # 4th CLIP pass
        return fre.forward_stacked(torch.cat([orig_tokens, low_tokens, high_tokens]), semantic)
