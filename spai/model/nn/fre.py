"""FrequencyRestorationEstimator: spectral reconstruction similarity with semantic-spectral fusion.

Module names and parameter shapes follow the research fork (``mfvit.features_processor.*``, see
``fusion-fork.md``) and upstream SPAI, so their checkpoints map one to one. Each fusion component is a config
switch; with all of them off this computes upstream SPAI's features (6 statistics per layer + context vector).
Every patch uses its own semantic context (the fork's cross-patch batch dependence is not reproduced).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from spai.model.config import Config
from spai.model.nn.precision import as_fp32, full_precision


def unbiased_std(x: torch.Tensor, dim: int, mean: torch.Tensor | None = None) -> torch.Tensor:
    """Unbiased standard deviation written with plain ops (exports identically everywhere)."""
    if mean is None:
        mean = x.mean(dim=dim, keepdim=True)
    n = x.shape[dim]
    return torch.sqrt(((x - mean) ** 2).sum(dim=dim) / (n - 1))


class Projector(nn.Module):
    """Upstream ``Projector``: [LN] -> (Dropout, Linear, act)* -> last act -> Dropout -> LN.

    Sequential indices: 0 Dropout, 1 Linear, 2 GELU, 3 Dropout, 4 Linear, ..., last activation, Dropout, so the
    Linear layers sit at 1, 4, 7, ... as in upstream and fork checkpoints.
    """

    def __init__(self, in_dim: int, out_dim: int, layers: int, dropout: float, input_norm: bool = True,
                 last_activation: str | None = None) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(in_dim) if input_norm else nn.Identity()
        mods: list[nn.Module] = []
        dim = in_dim
        for i in range(layers):
            mods += [nn.Dropout(dropout), nn.Linear(dim, out_dim)]
            if i < layers - 1:
                mods.append(nn.GELU())
            dim = out_dim
        mods += [nn.GELU() if last_activation == "gelu" else nn.Identity(), nn.Dropout(dropout)]
        self.projector = nn.Sequential(*mods)
        self.norm2 = nn.LayerNorm(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm2(self.projector(self.norm1(x)))


class FeatureSpecificProjector(nn.Module):
    """One :class:`Projector` per tapped layer; the same weights serve all three views."""

    def __init__(self, n_layers: int, in_dim: int, out_dim: int, layers: int, dropout: float,
                 last_activation: str | None) -> None:
        super().__init__()
        self.projectors = nn.ModuleList(
            Projector(in_dim, out_dim, layers, dropout, last_activation=last_activation) for _ in range(n_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: B x N x L x D -> B x N x L x P."""
        return torch.stack([proj(x[:, i]) for i, proj in enumerate(self.projectors)], dim=1)


class FeatureImportanceProjector(nn.Module):
    """Upstream's original-image branch ("spectral context vector")."""

    def __init__(self, n_layers: int, dim: int, layers: int, dropout: float) -> None:
        super().__init__()
        self.proj1 = Projector(2 * dim, dim, layers, dropout, input_norm=False, last_activation="gelu")
        self.alpha = nn.Parameter(torch.randn(1, n_layers, dim))
        self.proj2 = Projector(dim, dim, layers, dropout, input_norm=False, last_activation="gelu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: B x N x L x P -> B x P (the moments, the layer softmax and the weighted sum in fp32)."""
        with full_precision(x) as (x,):
            mean = x.mean(dim=2, keepdim=True)
            stats = torch.cat([mean.squeeze(2), unbiased_std(x, dim=2, mean=mean)], dim=-1)
        projected = self.proj1(stats)
        with full_precision(projected) as (projected,):
            weighted = projected * torch.softmax(self.alpha, dim=1)
            pooled = weighted.sum(dim=1)
        return self.proj2(pooled)


def _mlp(in_dim: int, hidden: int, out_dim: int, final: nn.Module) -> nn.Sequential:
    """Linear [0], LayerNorm [1], GELU [2], Linear [3], final [4] (fork's gate layout)."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Linear(hidden, out_dim),
                         final)


def single_key_attention(attn: nn.MultiheadAttention, context: torch.Tensor) -> torch.Tensor:
    """``attn(tokens, c, c)`` when ``c`` is ONE key per patch: softmax over one key is 1, so every token gets
    ``out_proj(W_v c + b_v)``. ``context``: B x E -> B x E (exactly MultiheadAttention's output)."""
    e = attn.embed_dim
    w_v = attn.in_proj_weight[2 * e:]
    b_v = attn.in_proj_bias[2 * e:] if attn.in_proj_bias is not None else None
    return attn.out_proj(F.linear(context, w_v, b_v))


class FrequencyRestorationEstimator(nn.Module):
    """Per-patch features: [similarity statistics, context vector] from the three views' tokens."""

    def __init__(self, cfg: Config, token_dim: int, n_layers: int) -> None:
        super().__init__()
        vit, fre = cfg.MODEL.VIT, cfg.MODEL.FRE
        p, d, s, drop = vit.PROJECTION_DIM, token_dim, fre.SEMANTIC_DIM, cfg.MODEL.SID_DROPOUT
        self.fre_cfg = fre
        self.n_layers = n_layers
        self.early_layers = [int(i) for i in fre.EARLY_FUSION_LAYERS]
        self.adaptive = bool(fre.USE_ADAPTIVE_GATING) and bool(self.early_layers)
        self.freq_aware = bool(fre.USE_FREQUENCY_AWARE_ATTENTION)
        self.cross = bool(fre.USE_CROSS_ATTENTION)
        self.hierarchical = bool(fre.USE_HIERARCHICAL_FUSION)
        self.extended = bool(fre.EXTENDED_STATISTICS)
        self.second_projection = bool(fre.FORK_SECOND_PROJECTION)
        self.uses_semantics = bool(self.early_layers) or self.freq_aware or self.cross
        if self.early_layers:
            self.semantic_proj = nn.Sequential(nn.Linear(s, d, bias=False), nn.LayerNorm(d), nn.GELU(),
                                               nn.Dropout(drop))
            self.early_fusion_gates = nn.ModuleList(_mlp(d + s, 2 * d, d, nn.Sigmoid()) for _ in self.early_layers)
        if self.adaptive:
            self.adaptive_gate = _mlp(d + s, d, 1, nn.Sigmoid())
        if self.freq_aware or self.cross:
            self.cross_attn_proj = nn.Sequential(nn.Linear(s, p, bias=False), nn.LayerNorm(p), nn.GELU())
        if self.freq_aware:
            self.freq_semantic_encoders = nn.ModuleList(_mlp(s, s // 2, s, nn.Dropout(drop)) for _ in range(3))
            self.freq_cross_attention = nn.ModuleList(
                nn.MultiheadAttention(p, max(1, fre.NUM_HEADS // 2), batch_first=True) for _ in range(3))
            self.freq_attention_norms = nn.ModuleList(nn.LayerNorm(p) for _ in range(3))
        if self.cross:
            self.cross_attention = nn.MultiheadAttention(p, fre.NUM_HEADS, batch_first=True)
            self.cross_attention_norm = nn.LayerNorm(p)
        if self.hierarchical:
            self.hierarchical_fusion = nn.Sequential(
                nn.Linear(3 * p, 2 * p), nn.LayerNorm(2 * p), nn.GELU(), nn.Dropout(drop), nn.Linear(2 * p, p),
                nn.LayerNorm(p))
        self.patch_projector = FeatureSpecificProjector(n_layers, d, p, vit.PROJECTION_LAYERS, drop,
                                                        fre.PROJECTOR_LAST_LAYER_ACTIVATION_TYPE)
        if fre.ORIGINAL_IMAGE_FEATURES_BRANCH:
            self.original_features_processor = FeatureImportanceProjector(n_layers, p, vit.PROJECTION_LAYERS, drop)
        self.out_dim = self.feature_dim(cfg, n_layers)

    @staticmethod
    def feature_dim(cfg: Config, n_layers: int) -> int:
        """Length of the per-patch vector: statistics (6 or 12 per layer) plus the context vector."""
        fre = cfg.MODEL.FRE
        stats = 0 if fre.DISABLE_RECONSTRUCTION_SIMILARITY else (12 if fre.EXTENDED_STATISTICS else 6) * n_layers
        return stats + (cfg.MODEL.VIT.PROJECTION_DIM if fre.ORIGINAL_IMAGE_FEATURES_BRANCH else 0)

    def early_fusion(self, tokens: torch.Tensor, semantic: torch.Tensor) -> torch.Tensor:
        """Gate semantic information into the tapped layers; ``tokens``: B x N x L x D, ``semantic``: B x S."""
        m = self.semantic_proj(semantic)[:, None, :]  # B x 1 x D
        sem = semantic[:, None, :].expand(-1, tokens.shape[2], -1)
        layers = list(tokens.unbind(dim=1))
        for gate, idx in zip(self.early_fusion_gates, self.early_layers):
            t = layers[idx]
            joint = torch.cat([t, sem], dim=-1)
            weight = self.adaptive_gate(joint) if self.adaptive else None
            g = gate(joint)
            gated = (t, g, m) if weight is None else (t, g, m, weight)
            with full_precision(*gated) as cast:  # the gating arithmetic in fp32 under any autocast
                t, g, mod = cast[:3]
                mod = mod * cast[3] if weight is not None else mod
                layers[idx] = g * t + (1 - g) * mod + 0.1 * t
        return torch.stack([as_fp32(t) for t in layers], dim=1)

    def semantic_attention(self, views: list[torch.Tensor], semantic: torch.Tensor,
                           aux: dict | None = None) -> list[torch.Tensor]:
        """Frequency-aware (per view) then global cross-attention to the patch's own semantic context."""
        if self.freq_aware:
            contexts = [self.cross_attn_proj(semantic + enc(semantic)) for enc in self.freq_semantic_encoders]
            if aux is not None:
                aux["semantic_views"] = torch.stack(contexts)
            views = [norm(t + single_key_attention(attn, c)[:, None, None])
                     for t, c, attn, norm in zip(views, contexts, self.freq_cross_attention,
                                                 self.freq_attention_norms)]
        if self.cross:
            attended = single_key_attention(self.cross_attention, self.cross_attn_proj(semantic))[:, None, None]
            views = [self.cross_attention_norm(t + attended) for t in views]
        return views

    def statistics(self, orig: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        """Cosine-similarity moments per layer: per pair, [means, stds(, maxima, minima)] of the N layers."""
        out = []
        with full_precision(orig, low, high) as (orig, low, high):  # near-1 similarities: fp32 under autocast
            for a, b in ((orig, low), (orig, high), (low, high)):
                sim = F.cosine_similarity(a, b, dim=-1, eps=1e-8)  # B x N x L
                mean = sim.mean(dim=-1, keepdim=True)
                moments = [mean.squeeze(-1), unbiased_std(sim, dim=-1, mean=mean)]
                if self.extended:
                    moments += [sim.amax(dim=-1), sim.amin(dim=-1)]
                out.extend(moments)
            return torch.cat(out, dim=1)

    def forward(self, orig: torch.Tensor, low: torch.Tensor, high: torch.Tensor,
                semantic: torch.Tensor | None = None) -> torch.Tensor:
        """Token features B x N x L x D of the three views (+ semantic B x S) -> B x out_dim."""
        return self.forward_stacked(torch.cat([orig, low, high]), semantic)

    def forward_stacked(self, tokens: torch.Tensor, semantic: torch.Tensor | None = None,
                        aux: dict | None = None) -> torch.Tensor:
        """``tokens``: 3B x N x L x D, the views stacked [orig; low; high] as the backbone returns them.

        If ``aux`` is a dict it receives what the consistency losses need: ``semantic_views`` (the three views'
        semantic contexts, 3 x B x P) and ``view_means`` (token-and-layer means of the three views, 3 x B x P).
        """
        if self.early_layers:
            tokens = self.early_fusion(tokens, semantic.repeat(3, 1))
        views = list(self.patch_projector(tokens).chunk(3))
        if self.freq_aware or self.cross:
            views = self.semantic_attention(views, semantic, aux)
        orig, low, high = views
        if aux is not None:
            aux["view_means"] = torch.stack([as_fp32(v).mean(dim=(1, 2)) for v in views])
        if self.hierarchical:
            orig = self.hierarchical_fusion(torch.cat([orig, low, high], dim=-1))
            if self.second_projection:  # research-fork quirk, only behind its switch
                low, high = self.patch_projector(low), self.patch_projector(high)
        parts = []
        if not self.fre_cfg.DISABLE_RECONSTRUCTION_SIMILARITY:
            parts.append(self.statistics(orig, low, high))
        if self.fre_cfg.ORIGINAL_IMAGE_FEATURES_BRANCH:
            parts.append(as_fp32(self.original_features_processor(orig)))
        return torch.cat(parts, dim=1)
