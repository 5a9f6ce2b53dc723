"""Deliberately plain re-statements of the documented forwards (spai-upstream.md §3-§5, fusion-fork.md), in float64,
one patch at a time, straight from a state dict. Independent of spai.model.nn on purpose."""

from __future__ import annotations

import torch
import torch.nn.functional as F

IMAGENET = (torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225]))
CLIP_NORM = (torch.tensor([0.48145466, 0.4578275, 0.40821073]), torch.tensor([0.26862954, 0.26130258, 0.27577711]))


def grid_patches(img: torch.Tensor) -> list[torch.Tensor]:
    """Non-overlapping 224 grid, row-major, remainders dropped (the image must give >= MINIMUM_PATCHES)."""
    _, h, w = img.shape
    return [img[:, r:r + 224, c:c + 224] for r in range(0, h - 223, 224) for c in range(0, w - 223, 224)]


def spectral_views(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Upstream filters.py: fftshift without dim, real part, clamp to [0, 1]."""
    spec = torch.fft.fftshift(torch.fft.fft2(x))
    low = torch.fft.ifft2(torch.fft.ifftshift(spec * mask)).real
    high = torch.fft.ifft2(torch.fft.ifftshift(spec * (1 - mask))).real
    return low.clamp(0, 1), high.clamp(0, 1)


def ln(x: torch.Tensor, sd: dict, name: str, eps: float = 1e-5) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], sd[name + ".weight"], sd[name + ".bias"], eps)


def lin(x: torch.Tensor, sd: dict, name: str) -> torch.Tensor:
    return x @ sd[name + ".weight"].T + (sd[name + ".bias"] if name + ".bias" in sd else 0)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Softmax(q k^T / sqrt(d)) v over heads; q: Lq x E, k/v: Lk x E."""
    e = q.shape[-1]
    d = e // heads
    qh, kh, vh = (t.reshape(t.shape[0], heads, d).transpose(0, 1) for t in (q, k, v))
    w = torch.softmax(qh @ kh.transpose(1, 2) / d ** 0.5, dim=-1)
    return (w @ vh).transpose(0, 1).reshape(q.shape[0], e)


def mfm_vit(x: torch.Tensor, sd: dict, depth: int, heads: int) -> list[torch.Tensor]:
    """Raw block outputs without CLS; x: 3 x 224 x 224 normalised."""
    v = "mfvit.vit."
    t = F.conv2d(x[None], sd[v + "patch_embed.proj.weight"], sd[v + "patch_embed.proj.bias"], stride=16)
    t = torch.cat([sd[v + "cls_token"][0], t.flatten(2)[0].T]) + sd[v + "pos_embed"][0]
    taps = []
    for i in range(depth):
        b = f"{v}blocks.{i}."
        h = ln(t, sd, b + "norm1", 1e-6)
        bias = torch.cat([sd[b + "attn.q_bias"], torch.zeros_like(sd[b + "attn.q_bias"]), sd[b + "attn.v_bias"]])
        q, k, val = (h @ sd[b + "attn.qkv.weight"].T + bias).chunk(3, dim=-1)
        t = t + lin(attention(q, k, val, heads), sd, b + "attn.proj")
        t = t + lin(F.gelu(lin(ln(t, sd, b + "norm2", 1e-6), sd, b + "mlp.fc1")), sd, b + "mlp.fc2")
        taps.append(t[1:])
    return taps


def clip_vit(x: torch.Tensor, sd: dict, depth: int, heads: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """OpenAI CLIP visual (QuickGELU): ln_2 outputs without CLS, and ln_post(CLS) @ proj."""
    v = "mfvit.vit.clip.visual."
    t = F.conv2d(x[None], sd[v + "conv1.weight"], stride=16).flatten(2)[0].T
    t = torch.cat([sd[v + "class_embedding"][None], t]) + sd[v + "positional_embedding"]
    t = ln(t, sd, v + "ln_pre")
    taps = []
    for i in range(depth):
        b = f"{v}transformer.resblocks.{i}."
        q, k, val = (ln(t, sd, b + "ln_1") @ sd[b + "attn.in_proj_weight"].T + sd[b + "attn.in_proj_bias"]).chunk(3, -1)
        t = t + lin(attention(q, k, val, heads), sd, b + "attn.out_proj")
        h = ln(t, sd, b + "ln_2")
        taps.append(h[1:])
        u = lin(h, sd, b + "mlp.c_fc")
        t = t + lin(u * torch.sigmoid(1.702 * u), sd, b + "mlp.c_proj")
    return taps, ln(t[0], sd, v + "ln_post") @ sd[v + "proj"]


def projector(x: torch.Tensor, sd: dict, name: str, layers: int, norm1: bool, last_gelu: bool) -> torch.Tensor:
    if norm1:
        x = ln(x, sd, name + ".norm1")
    for j in range(layers):
        x = lin(x, sd, f"{name}.projector.{1 + 3 * j}")
        if j < layers - 1 or last_gelu:
            x = F.gelu(x)
    return ln(x, sd, name + ".norm2")


def similarity_stats(views: list[list[torch.Tensor]], extended: bool) -> torch.Tensor:
    """Per pair (o,l), (o,h), (l,h): layer means, stds (then maxima, minima if extended)."""
    out = []
    for a, b in ((0, 1), (0, 2), (1, 2)):
        sims = [F.cosine_similarity(x, y, dim=-1) for x, y in zip(views[a], views[b])]
        out += [torch.stack([s.mean() for s in sims]), torch.stack([s.std() for s in sims])]
        if extended:
            out += [torch.stack([s.max() for s in sims]), torch.stack([s.min() for s in sims])]
    return torch.cat(out)


def context_vector(orig: list[torch.Tensor], sd: dict, layers: int) -> torch.Tensor:
    o = "mfvit.features_processor.original_features_processor."
    rows = [projector(torch.cat([t.mean(0), t.std(0)]), sd, o + "proj1", layers, False, True) for t in orig]
    weighted = (torch.softmax(sd[o + "alpha"][0], dim=0) * torch.stack(rows)).sum(0)
    return projector(weighted, sd, o + "proj2", layers, False, True)


def aggregate(feats: torch.Tensor, sd: dict) -> torch.Tensor:
    """Spectral context attention with the learnable query, LayerNorm, ReLU head -> logit."""
    q = sd["patch_aggregator"]
    heads, _, d = q.shape
    k, v = (feats @ sd["to_kv.weight"].T).chunk(2, dim=-1)
    out = attention(q.reshape(1, heads * d), k, v, heads) @ sd["to_out.0.weight"].T
    h = ln(out[0], sd, "norm")
    h = F.relu(lin(h, sd, "cls_head.head.0"))
    h = F.relu(lin(h, sd, "cls_head.head.3"))
    return lin(h, sd, "cls_head.head.6")


def upstream_logit(img: torch.Tensor, sd: dict, depth: int, vit_heads: int, layers: int = 2) -> float:
    sd = {k: v.double() for k, v in sd.items()}
    mean, std = (t.double().view(3, 1, 1) for t in IMAGENET)
    feats = []
    for x in grid_patches(img.double()):
        low, high = spectral_views(x, sd["mfvit.frequencies_mask"])
        views = [mfm_vit((v - mean) / std, sd, depth, vit_heads) for v in (x, low, high)]
        fp = "mfvit.features_processor.patch_projector.projectors."
        proj = [[projector(t, sd, f"{fp}{i}", layers, True, False) for i, t in enumerate(v)] for v in views]
        feats.append(torch.cat([similarity_stats(proj, False), context_vector(proj[0], sd, layers)]))
    return float(aggregate(torch.stack(feats), sd))


def gate(x: torch.Tensor, sd: dict, name: str, final) -> torch.Tensor:
    return final(lin(F.gelu(ln(lin(x, sd, name + ".0"), sd, name + ".1")), sd, name + ".3"))


def mha(tokens: torch.Tensor, ctx: torch.Tensor, sd: dict, name: str, heads: int) -> torch.Tensor:
    """nn.MultiheadAttention(tokens, ctx, ctx) written out; ctx: 1 x E (one key)."""
    w, b = sd[name + ".in_proj_weight"], sd[name + ".in_proj_bias"]
    e = tokens.shape[-1]
    q, k, v = tokens @ w[:e].T + b[:e], ctx @ w[e:2 * e].T + b[e:2 * e], ctx @ w[2 * e:].T + b[2 * e:]
    return lin(attention(q, k, v, heads), sd, name + ".out_proj")


def fork_patch(x: torch.Tensor, sd: dict, c: dict) -> torch.Tensor:
    """One patch through the fork's documented forward (steps 1-7)."""
    fp = "mfvit.features_processor."
    mean, std = (t.double().view(3, 1, 1) for t in CLIP_NORM)
    low, high = spectral_views(x, sd["mfvit.frequencies_mask"])
    runs = [clip_vit((v - mean) / std, sd, c["depth"], c["clip_heads"]) for v in (x, low, high)]
    sem = runs[0][1]
    views = []
    for taps, _ in runs:
        taps = list(taps)
        for g, idx in enumerate(c["fusion_layers"]):  # 1. early fusion
            t = taps[idx]
            joint = torch.cat([t, sem.expand(t.shape[0], -1)], dim=-1)
            m = F.gelu(ln(sem @ sd[fp + "semantic_proj.0.weight"].T, sd, fp + "semantic_proj.1"))
            m = m * gate(joint, sd, fp + "adaptive_gate", torch.sigmoid)
            gg = gate(joint, sd, f"{fp}early_fusion_gates.{g}", torch.sigmoid)
            taps[idx] = gg * t + (1 - gg) * m + 0.1 * t
        views.append([projector(t, sd, f"{fp}patch_projector.projectors.{i}", c["layers"], True, False)
                      for i, t in enumerate(taps)])  # 2. projection
    cap = lambda s: F.gelu(ln(s @ sd[fp + "cross_attn_proj.0.weight"].T, sd, fp + "cross_attn_proj.1"))
    for k in range(3):  # 3. frequency-aware attention
        ctx = cap(sem + gate(sem, sd, f"{fp}freq_semantic_encoders.{k}", lambda z: z))[None]
        views[k] = [ln(t + mha(t, ctx, sd, f"{fp}freq_cross_attention.{k}", c["fre_heads"] // 2), sd,
                       f"{fp}freq_attention_norms.{k}") for t in views[k]]
    ctx = cap(sem)[None]  # 4. global attention
    views = [[ln(t + mha(t, ctx, sd, fp + "cross_attention", c["fre_heads"]), sd, fp + "cross_attention_norm")
              for t in v] for v in views]
    hf = fp + "hierarchical_fusion."  # 5. hierarchical fusion + the second-projection quirk
    views[0] = [ln(lin(F.gelu(ln(lin(torch.cat([o, lo, hi], -1), sd, hf + "0"), sd, hf + "1")), sd, hf + "4"), sd,
                   hf + "5") for o, lo, hi in zip(*views)]
    for k in (1, 2):
        views[k] = [projector(t, sd, f"{fp}patch_projector.projectors.{i}", c["layers"], True, False)
                    for i, t in enumerate(views[k])]
    return torch.cat([similarity_stats(views, True), context_vector(views[0], sd, c["layers"])])


def fork_logit(img: torch.Tensor, sd: dict, c: dict) -> float:
    sd = {k: v.double() for k, v in sd.items()}
    feats = torch.stack([fork_patch(x, sd, c) for x in grid_patches(img.double())])
    return float(aggregate(feats, sd))
