"""The SPAI model: patch encoder (spectral split + frozen backbone + FRE) and the image-level aggregator.

The deployment split is two graphs, so that a patch encoder batches patches of any image while the aggregator
sees one image's patches at once: ``encode_patches`` (N x 3 x 224 x 224 in [0, 1] -> N x D) and ``aggregate``
(B x L x D + B x L mask -> B x 1). It knows nothing of deployment: scoring images of any size is the inference
layer's (:class:`spai.infer.detector.SPAIDetector`, what ``spai.create_model`` returns, adds ``score_images`` /
``score``).
Parameter names follow upstream SPAI / the fusion fork (``mfvit.*``, ``to_kv``, ``patch_aggregator``, ...).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from spai.model.calibration import UNCALIBRATED, Calibration
from spai.model.config import Config
from spai.model.nn.aggregator import ClassificationHead, spectral_context_attention
from spai.model.nn.fre import FrequencyRestorationEstimator
from spai.model.nn.precision import full_precision
from spai.model.nn.spectral import SpectralFilter, circular_mask
from spai.model.patching import PatchSpec, pad_image, patch_grid, patch_spec_from_config


def to_unit_float(patches: torch.Tensor) -> torch.Tensor:
    """uint8 pixel values -> floats in [0, 1] (x / 255: the scaling of training and of the exported graphs);
    float patches pass unchanged."""
    return patches.float().div(255.0) if patches.dtype == torch.uint8 else patches


def patchify(image: torch.Tensor, spec: PatchSpec = PatchSpec()) -> torch.Tensor:
    """One 3 x H x W image tensor (floats in [0, 1] or uint8, any device) -> L x 3 x S x S floats, with the grid
    and padding that :mod:`spai.infer.scorer` cuts images with (training's tensor path)."""
    grid = patch_grid(image.shape[1], image.shape[2], spec)
    image = pad_image(image, grid, channels_first=True)
    s = grid.size
    return to_unit_float(torch.stack([image[:, t:t + s, c:c + s] for t, c in grid.corners])).float()


class MFViT(nn.Module):
    """Patch encoder: spectral split, one backbone pass over the three views, FrequencyRestorationEstimator."""

    def __init__(self, cfg: Config, backbone: nn.Module) -> None:
        super().__init__()
        size = cfg.MODEL.VIT.IMG_SIZE
        self.register_buffer("frequencies_mask", circular_mask(size, cfg.MODEL.FRE.MASKING_RADIUS))
        self.filter = SpectralFilter(self.frequencies_mask)
        self.vit = backbone
        self.register_buffer("mean", torch.tensor(backbone.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(backbone.std).view(1, 3, 1, 1), persistent=False)
        self.features_processor = FrequencyRestorationEstimator(cfg, backbone.width, len(backbone.layers))

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.filter.set_mask(self.frequencies_mask)  # a checkpoint's stored mask is authoritative

    def backbone_features(self, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens of the stacked [orig; low; high] views (3N x layers x tokens x width) and their embeddings.
        The views and their normalisation are fp32 under any autocast; the backbone runs in the caller's precision."""
        with full_precision(patches) as (patches,):
            low, high = self.filter(patches)
            views = (torch.cat([patches, low, high]) - self.mean) / self.std
        with torch.no_grad():
            return self.vit(views)

    def forward(self, patches: torch.Tensor, aux: dict[str, Any] | None = None) -> torch.Tensor:
        """N x 3 x 224 x 224 floats in [0, 1] -> N x D patch vectors."""
        tokens, embeddings = self.backbone_features(patches)
        semantic = embeddings[: patches.shape[0]] if self.features_processor.uses_semantics else None
        return self.features_processor.forward_stacked(tokens, semantic, aux=aux)


class SPAIModel(nn.Module):
    """SPAI with semantic-spectral fusion; build it with :func:`spai.create_model`."""

    def __init__(self, cfg: Config, backbone: nn.Module) -> None:
        super().__init__()
        self.cfg = cfg
        pv = cfg.MODEL.PATCH_VIT
        self.patch_spec = patch_spec_from_config(cfg)
        self.mfvit = MFViT(cfg, backbone)
        dim = self.mfvit.features_processor.out_dim
        self.feature_dim = dim
        heads, embed = pv.NUM_HEADS, pv.ATTN_EMBED_DIM
        drop = cfg.MODEL.SID_DROPOUT
        self.patch_aggregator = nn.Parameter(torch.zeros(heads, 1, embed // heads))
        nn.init.trunc_normal_(self.patch_aggregator, std=0.02)
        self.to_kv = nn.Linear(dim, 2 * embed, bias=False)
        self.attn_dropout = nn.Dropout(drop)
        self.to_out = nn.Sequential(nn.Linear(embed, dim, bias=False), nn.Dropout(drop))
        self.norm = nn.LayerNorm(dim)
        self.cls_head = ClassificationHead(dim, cfg.MODEL.CLS_HEAD.MLP_RATIO, drop)
        self.calibration: Calibration = UNCALIBRATED  # a checkpoint's calibration entry (spai.model.factory) sets it

    # --- training-mode control: the backbone is frozen and always in eval mode ---------------------------
    def train(self, mode: bool = True) -> SPAIModel:
        super().train(mode)
        self.mfvit.vit.eval()
        return self

    # --- the deployment split -----------------------------------------------------------------------------
    def encode_patches(self, patches: torch.Tensor) -> torch.Tensor:
        """N x 3 x 224 x 224 floats in [0, 1] (or uint8 pixel values, scaled here as the exported graph scales
        them) -> N x D patch vectors (one encoder call, no chunking)."""
        return self.mfvit(to_unit_float(patches))

    def aggregate(self, features: torch.Tensor, mask: torch.Tensor | None = None,
                  return_attention: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """B x L x D patch vectors + B x L validity mask (True = real patch) -> B x 1 logits."""
        if mask is None:
            mask = torch.ones(features.shape[:2], dtype=torch.bool, device=features.device)
        with full_precision(features) as (features,):  # fp32 under any autocast, as every exported aggregator
            pooled, attn = spectral_context_attention(features, mask, self.patch_aggregator, self.to_kv, self.to_out,
                                                      self.attn_dropout)
            logits = self.cls_head(self.norm(pooled))
        return (logits, attn) if return_attention else logits

    # --- tensor path (training) --------------------------------------------------------------------------
    def forward(self, images: torch.Tensor, aux: dict[str, Any] | None = None) -> torch.Tensor:
        """B x 3 x H x W batch of same-size images in [0, 1] (e.g. augmented views side by side) -> B x 1."""
        patches = torch.stack([patchify(img, self.patch_spec) for img in images])  # B x L x 3 x S x S
        b, n = patches.shape[:2]
        features = self.mfvit(patches.flatten(0, 1), aux=aux)
        return self.aggregate(features.view(b, n, -1))

    @property
    def device(self) -> torch.device:
        return self.patch_aggregator.device
