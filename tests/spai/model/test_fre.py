"""FrequencyRestorationEstimator: statistics order, switches off == upstream SPAI, single-key attention."""

import torch
import torch.nn.functional as F
from torch import nn

from spai.model.config import get_config
from spai.model.nn.fre import FrequencyRestorationEstimator, single_key_attention

FUSION_OFF = [("MODEL.FRE.EARLY_FUSION_LAYERS", []), ("MODEL.FRE.USE_ADAPTIVE_GATING", False),
              ("MODEL.FRE.USE_FREQUENCY_AWARE_ATTENTION", False), ("MODEL.FRE.USE_CROSS_ATTENTION", False),
              ("MODEL.FRE.USE_HIERARCHICAL_FUSION", False), ("MODEL.FRE.EXTENDED_STATISTICS", False)]


def _fre(overrides=()):
    torch.manual_seed(0)
    cfg = get_config("spai-tiny", overrides)
    return FrequencyRestorationEstimator(cfg, token_dim=64, n_layers=4).eval(), cfg


def _upstream_reference(fre, orig, low, high):
    """A plain transcription of upstream SPAI's FRE (spai-upstream.md section 4)."""
    def project(x):
        return torch.stack([fre.patch_projector.projectors[i](x[:, i]) for i in range(x.shape[1])], dim=1)
    po, pl, ph = project(orig), project(low), project(high)
    stats = []
    for a, b in ((po, pl), (po, ph), (pl, ph)):
        sim = F.cosine_similarity(a, b, dim=-1, eps=1e-8)
        stats += [sim.mean(dim=-1), sim.std(dim=-1)]
    ofp = fre.original_features_processor
    x = torch.cat([po.mean(dim=2), po.std(dim=2)], dim=-1)
    x = ofp.proj1(x) * torch.softmax(ofp.alpha, dim=1)
    return torch.cat(stats + [ofp.proj2(x.sum(dim=1))], dim=1)


def test_all_fusion_switches_off_computes_upstream_spai():
    fre, cfg = _fre(FUSION_OFF)
    assert not fre.uses_semantics
    assert not any(n.startswith(("semantic_proj", "cross", "freq_", "early", "adaptive", "hier"))
                   for n, _ in fre.named_parameters())
    views = [torch.randn(2, 4, 196, 64) for _ in range(3)]
    with torch.no_grad():
        out = fre(*views)
        ref = _upstream_reference(fre, *views)
    assert out.shape == (2, 6 * 4 + cfg.MODEL.VIT.PROJECTION_DIM)
    assert torch.allclose(out, ref, atol=1e-5)


def test_extended_statistics_order_is_mean_std_max_min_per_pair():
    fre, _ = _fre()
    views = [torch.randn(1, 4, 196, 48) for _ in range(3)]
    stats = fre.statistics(*views)
    sims = [F.cosine_similarity(a, b, dim=-1) for a, b in ((views[0], views[1]), (views[0], views[2]),
                                                            (views[1], views[2]))]
    expected = torch.cat([torch.cat([s.mean(-1), s.std(-1), s.amax(-1), s.amin(-1)], dim=1) for s in sims], dim=1)
    assert stats.shape == (1, 12 * 4)
    assert torch.allclose(stats, expected, atol=1e-6)


def test_single_key_attention_equals_multihead_attention():
    torch.manual_seed(0)
    attn = nn.MultiheadAttention(48, 4, batch_first=True).eval()
    tokens, context = torch.randn(3, 10, 48), torch.randn(3, 48)
    ref, _ = attn(tokens, context[:, None], context[:, None])
    ours = single_key_attention(attn, context)
    assert torch.allclose(ref, ours[:, None].expand_as(ref), atol=1e-6)


def test_fusion_parameter_names_and_shapes_follow_the_fork():
    fre, cfg = _fre()
    shapes = {n: tuple(p.shape) for n, p in fre.named_parameters()}
    d, s, p = 64, 32, 48
    assert shapes["semantic_proj.0.weight"] == (d, s)
    assert shapes["cross_attn_proj.0.weight"] == (p, s)
    assert shapes["freq_semantic_encoders.2.3.weight"] == (s, s // 2)
    assert shapes["early_fusion_gates.1.0.weight"] == (2 * d, d + s)
    assert shapes["early_fusion_gates.1.3.weight"] == (d, 2 * d)
    assert shapes["adaptive_gate.3.weight"] == (1, d)
    assert shapes["cross_attention.in_proj_weight"] == (3 * p, p)
    assert shapes["hierarchical_fusion.0.weight"] == (2 * p, 3 * p)
    assert shapes["hierarchical_fusion.4.weight"] == (p, 2 * p)
    assert shapes["patch_projector.projectors.3.projector.7.weight"] == (p, p)  # PROJECTION_LAYERS 3
    assert shapes["original_features_processor.alpha"] == (1, 4, p)


def test_each_patch_uses_its_own_semantic_context():
    fre, _ = _fre()
    views = [torch.randn(3, 4, 196, 64) for _ in range(3)]
    sem = torch.randn(3, 32)
    with torch.no_grad():
        batched = fre(*views, semantic=sem)
        single = torch.cat([fre(*(v[i:i + 1] for v in views), semantic=sem[i:i + 1]) for i in range(3)])
    assert torch.allclose(batched, single, atol=1e-5)
