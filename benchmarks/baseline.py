"""The original algorithms every speed-up is measured against, written the way the original code runs them.

Two baselines, picked by the model's config (:func:`original_baseline`):

* :class:`UpstreamSpai` -- SPAI's own inference (mever-team/spai, ``PatchBasedMFViT`` + ``MFViT``), for SPAI-style
  heads (``spai-b16``, ``spai-mfm-b16``, any config without semantic fusion): ``unfold`` patching (five-crop below
  ``MINIMUM_PATCHES``), the patches of an image pushed through the encoder ``FEATURE_EXTRACTION_BATCH`` at a time,
  per chunk upstream's ``torch.fft`` filter (``filters.filter_image_frequencies``: ``fft2`` -> ``fftshift`` ->
  masked ``ifftshift`` -> ``ifft2`` -> real part, clamped), then THREE separate backbone passes (original,
  low-pass, high-pass view; with a CLIP backbone the intermediate tokens come from forward hooks on every
  block's ``ln_2``, as upstream's ``CLIPBackbone`` takes them), the FRE, and per image the spectral context
  attention and the head. fp32 throughout.
* :class:`FusionFork` -- the fusion variant's own algorithm (the research fork, ``fusion-fork.md``), for fusion
  configs: the same, plus its extra full CLIP pass over the normalised original patch for the semantic vector
  (four backbone passes per patch). The fork's cross-patch batch dependence is not reproduced (each patch uses its
  own context, the fork's one-patch-at-a-time output, which is also what it costs).

``chunk``: patches per encoder call: 1 = one patch per call (the memory reference of the issue), ``None`` =
``MODEL.FEATURE_EXTRACTION_BATCH`` (400 in the released configs). The weights are the model's own modules
(backbone, FRE, head), so a speed ratio compares the same network computed two ways; a test checks that the
baselines compute the same features and logits as :meth:`spai.SPAIModel.encode_patches` / ``score_images``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

UPSTREAM = "upstream SPAI (mever-team/spai): torch.fft filter, 3 backbone passes"
FORK = "fusion fork (its own code): torch.fft filter, 3 backbone passes + 1 semantic CLIP pass"


def upstream_filter(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Upstream ``filters.filter_image_frequencies`` + the clamping of ``MFViT.forward``, op for op (fp32 FFT,
    ``fftshift`` without ``dim`` as upstream calls it)."""
    spectrum = torch.fft.fftshift(torch.fft.fft2(x.float()))
    low = torch.fft.ifft2(torch.fft.ifftshift(spectrum * mask)).real
    high = torch.fft.ifft2(torch.fft.ifftshift(spectrum * (1 - mask))).real
    return low.clamp(0.0, 1.0).to(x.dtype), high.clamp(0.0, 1.0).to(x.dtype)


def upstream_patches(image: torch.Tensor, size: int, stride: int, minimum: int) -> torch.Tensor:
    """``patchify_image`` (``unfold``, remainders dropped, row-major) of a 3 x H x W image in [0, 1], or
    torchvision's ``five_crop`` when the grid has fewer than ``minimum`` patches -> L x 3 x S x S."""
    from torchvision.transforms.functional import five_crop

    if image.shape[1] < size or image.shape[2] < size:  # the data transform's PadIfNeeded (reflect-101, centred)
        ph, pw = max(size - image.shape[1], 0), max(size - image.shape[2], 0)
        pad = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
        image = torch.nn.functional.pad(image[None], pad, mode="reflect")[0]
    grid = image.unfold(1, size, stride).unfold(2, size, stride)  # 3 x nH x nW x S x S
    patches = grid.permute(1, 2, 0, 3, 4).reshape(-1, image.shape[0], size, size)
    if patches.shape[0] < minimum:
        patches = torch.stack(five_crop(image, [size, size]))
    return patches


class OriginalAlgorithm:
    """Shared by both baselines: patching, chunking, per-image aggregation; subclasses define the passes."""

    name = "original"

    def __init__(self, model: Any, chunk: int | None = None) -> None:
        self.model = model
        self.mfvit = model.mfvit
        self.chunk = int(chunk or model.cfg.MODEL.FEATURE_EXTRACTION_BATCH or 400)
        self._captured: list[torch.Tensor] = []
        self._capturing = False
        self._hooks: list[Any] = []
        self.visual: nn.Module | None = getattr(getattr(model.mfvit.vit, "clip", None), "visual", None)
        if self.visual is not None:  # upstream's CLIPBackbone: hooks on every block's ln_2
            self._hooks = [block.ln_2.register_forward_hook(self._capture)
                           for block in self.visual.transformer.resblocks]

    def _capture(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if self._capturing:
            self._captured.append(output)

    def close(self) -> None:
        """Remove the hooks from the shared backbone."""
        for handle in self._hooks:
            handle.remove()
        self._hooks = []

    def __enter__(self) -> OriginalAlgorithm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mfvit.mean) / self.mfvit.std

    def backbone_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """One backbone pass over normalised patches -> B x layers x tokens x width (upstream's features)."""
        if self.visual is None:  # upstream's own ViT (MFM): the raw block outputs it returns
            return self.mfvit.vit(x)[0]
        self._captured, self._capturing = [], True
        try:
            self.visual(x)
        finally:
            self._capturing = False
        taps = [self._captured[i] for i in self.mfvit.vit.layers]
        if not getattr(self.visual.transformer, "batch_first", True):
            taps = [t.transpose(0, 1) for t in taps]
        return torch.stack([t[:, 1:] for t in taps], dim=1)

    def semantic(self, x: torch.Tensor) -> torch.Tensor | None:
        """The semantic vector of the normalised original patches (None: the head uses none)."""
        return None

    @torch.no_grad()
    def encode(self, patches: torch.Tensor) -> torch.Tensor:
        """N x 3 x 224 x 224 floats in [0, 1] -> N x D patch vectors, in ONE call (``MFViT.forward``)."""
        low, high = upstream_filter(patches, self.mfvit.frequencies_mask)
        orig = self.normalise(patches)
        tokens = [self.backbone_tokens(v) for v in (orig, self.normalise(low), self.normalise(high))]
        return self.mfvit.features_processor(*tokens, semantic=self.semantic(orig))

    __call__ = encode

    def patches(self, image: np.ndarray | torch.Tensor) -> torch.Tensor:
        """An H x W x 3 uint8 image (the decoder's output) -> its patches as upstream cuts them."""
        x = torch.as_tensor(np.ascontiguousarray(image)).permute(2, 0, 1).float().div(255.0)  # ToTensor + /255
        spec = self.model.patch_spec
        return upstream_patches(x, spec.size, spec.stride, spec.minimum_patches)

    @torch.no_grad()
    def score(self, image: np.ndarray | torch.Tensor) -> float:
        """One image's logit: its patches ``chunk`` at a time through :meth:`encode`, then SCA and the head."""
        patches = self.patches(image)
        feats = torch.cat([self.encode(patches[i:i + self.chunk]) for i in range(0, len(patches), self.chunk)])
        return float(self.model.aggregate(feats[None]).reshape(-1)[0])


class UpstreamSpai(OriginalAlgorithm):
    """SPAI's original algorithm: three backbone passes per chunk, no semantic pass."""

    name = UPSTREAM


class FusionFork(OriginalAlgorithm):
    """The fusion fork's algorithm: upstream's three passes plus a full CLIP pass for the semantic vector."""

    name = FORK

    def semantic(self, x: torch.Tensor) -> torch.Tensor:
        if self.visual is None:
            return self.mfvit.vit(x)[1]
        return self.visual(x)  # the fork's second full pass (ln_post + proj of CLS); the hooks stay idle


def original_baseline(model: Any, chunk: int | None = None) -> OriginalAlgorithm:
    """The original algorithm of ``model``'s head: :class:`FusionFork` for fusion configs, else
    :class:`UpstreamSpai`. ``chunk``: patches per encoder call (None = the config's FEATURE_EXTRACTION_BATCH)."""
    fusion = model.mfvit.features_processor.uses_semantics
    return (FusionFork if fusion else UpstreamSpai)(model, chunk)
