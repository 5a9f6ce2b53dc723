"""The torch bf16 route's precision rules (spai.model.nn.precision): which GEMMs stay fp32, their FLOP share, and the
greedy search that finds the layers to keep."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
from torch import nn

import spai
from spai.errors import ConfigError
from spai.model.nn.precision import (
    Bf16Gemms,
    bf16_fp32_layers,
    bf16_keep_fp32,
    flop_share,
    gemm_weights,
    precision_table,
)

CONV1 = "mfvit.vit.clip.visual.conv1.weight"


def _patches(n: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, 224, 224, generator=torch.Generator().manual_seed(3))


def _layer_io(model: nn.Module, modules: dict[str, nn.Module], x: torch.Tensor, mode: Bf16Gemms) -> dict:
    """Each module's (first) input and output during ``encode_patches(x)`` under ``mode``."""
    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def keep(name: str) -> object:
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            seen.setdefault(name, (inputs[0], output))
        return hook

    hooks = [m.register_forward_hook(keep(k)) for k, m in modules.items()]
    try:
        with torch.no_grad(), mode:
            model.encode_patches(x)
    finally:
        for h in hooks:
            h.remove()
    return seen


def test_keep_fp32_runs_the_kept_layer_in_fp32_and_the_others_in_bf16(tiny_model) -> None:
    visual = tiny_model.mfvit.vit.clip.visual
    modules = {"conv1": visual.conv1, "c_fc": visual.transformer.resblocks[0].mlp.c_fc}
    x = _patches()
    for keep, exact in (({CONV1}, {"conv1"}), ((), set())):
        seen = _layer_io(tiny_model, modules, x, Bf16Gemms(tiny_model, keep))
        for name, (inputs, output) in seen.items():
            with torch.no_grad():
                fp32 = modules[name](inputs)  # the same layer on the same inputs, outside the mode: fp32
            assert torch.equal(output, fp32) == (name in exact), (keep, name)
            assert output.dtype == torch.float32 and (output - fp32).abs().max() < 0.05 * fp32.abs().max()


def test_keep_fp32_rejects_names_that_are_no_gemm_weight(tiny_model) -> None:
    with pytest.raises(ConfigError, match=r"names no GEMM weight.*conv9\.weight"):
        Bf16Gemms(tiny_model, {CONV1, "mfvit.vit.clip.visual.conv9.weight"})
    with pytest.raises(ConfigError, match="no backbone"):
        bf16_fp32_layers(nn.Sequential(nn.Linear(2, 2)))


@pytest.mark.parametrize(("config", "kept"), [
    ("spai-tiny", {CONV1}), ("spai-b16", {CONV1}), ("spai-fusion-b16", {CONV1}),
    ("spai-mfm-b16", {"mfvit.vit.patch_embed.proj.weight"})])
def test_the_route_keeps_the_backbones_patch_embedding_in_every_config(config, kept) -> None:
    model = spai.create_model(config)
    assert bf16_fp32_layers(model) == kept and kept <= set(gemm_weights(model))


def test_flop_share_drops_by_the_patch_embeddings_share(tiny_model) -> None:
    x = _patches()
    conv1 = tiny_model.mfvit.vit.clip.visual.conv1
    outputs: list[torch.Tensor] = []
    hook = conv1.register_forward_hook(lambda m, i, o: outputs.append(o))
    try:
        table = precision_table(tiny_model, x, ())  # every GEMM in bf16 (and the FLOP count's own pass: fp32)
    finally:
        hook.remove()
    conv1_flops = sum(2 * o.numel() * conv1.weight[0].numel() for o in outputs[:len(outputs) // 2])
    all_bf16, kept = flop_share(tiny_model, x, ()), flop_share(tiny_model, x, {CONV1})
    assert all_bf16 == pytest.approx(table["bf16_share"]) and 0.5 < all_bf16 < 1
    assert all_bf16 - kept == pytest.approx(conv1_flops / table["total_flops"], rel=1e-6) and conv1_flops > 0


def test_the_precision_table_records_what_the_route_keeps_in_fp32(tiny_model) -> None:
    x = _patches()
    table = precision_table(tiny_model, x)  # the route's rule, as `spai export --precision bf16` records it
    assert table["fp32_gemms"] == sorted(bf16_fp32_layers(tiny_model)) == [CONV1]
    assert "mfvit.vit.clip.visual.conv1" not in table["bf16_layers"]  # what ran in bf16, tallied as it ran
    assert "mfvit.vit.clip.visual.conv1" in table["fp32"][0] and 0.5 < table["bf16_share"] < 1


def test_bf16_keep_fp32_keeps_the_group_whose_rounding_moves_the_probabilities() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 1))
    with torch.no_grad():  # layer 0 subtracts a large offset: bf16 rounds its input's detail away; layer 1 sums
        net[0].weight.copy_(torch.eye(4))
        net[0].bias.fill_(-100.0)
        net[1].weight.fill_(1.0)
        net[1].bias.zero_()
    x = 100 + 0.3 * torch.randn(64, 4, generator=torch.Generator().manual_seed(1))

    def probabilities(mode: Bf16Gemms | None) -> np.ndarray:
        with torch.no_grad(), mode or contextlib.nullcontext():
            return torch.sigmoid(net(x)).numpy()

    kept, steps = bf16_keep_fp32(probabilities, gemm_weights(net))
    assert kept == {"0.weight"}
    assert [s["group"] for s in steps] == [None, "0.weight"]
    assert steps[0]["max_abs_dprob"] > 5e-3 >= steps[1]["max_abs_dprob"]  # keeping layer 0 is enough
    assert steps[1]["alone"] > 5e-3


# --- autocast: what must stay fp32 stays fp32 (issue 33) ---------------------------------------------------------

AUTOCAST_DTYPES = [torch.bfloat16, torch.float16]


@pytest.mark.parametrize("dtype", AUTOCAST_DTYPES, ids=["bf16", "fp16"])
def test_spectral_views_are_fp32_under_autocast(dtype):
    """torch.autocast casts matmul to bf16/fp16 (on CPU too): the DFT filter must not follow it (before the fix the
    views moved by up to 7e-3 under bf16, about 2 grey levels)."""
    x = _patches(2)
    ref_low, ref_high = spai.split_frequencies(x)
    with torch.autocast("cpu", dtype=dtype):
        low, high = spai.split_frequencies(x)
    assert low.dtype == high.dtype == torch.float32
    assert torch.equal(low, ref_low) and torch.equal(high, ref_high)


def _backbone_input(model: nn.Module, x: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """The normalised [orig; low; high] views the backbone receives in ``encode_patches(x)``."""
    seen: list[torch.Tensor] = []
    hook = model.mfvit.vit.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    autocast = torch.autocast("cpu", dtype=dtype) if dtype else contextlib.nullcontext()
    try:
        with torch.no_grad(), autocast:
            model.encode_patches(x)
    finally:
        hook.remove()
    return seen[0]


@pytest.mark.parametrize("dtype", AUTOCAST_DTYPES, ids=["bf16", "fp16"])
def test_model_views_and_normalisation_are_fp32_under_autocast(tiny_model, dtype):
    x = _patches(2)
    views = _backbone_input(tiny_model, x, dtype)
    assert views.dtype == torch.float32
    assert torch.equal(views, _backbone_input(tiny_model, x, None))


def test_the_training_forward_sees_fp32_views_under_autocast(tiny_model):
    """TRAIN.AMP (bf16 on H100/H200) runs the training forward under autocast: it must learn on the views the
    engines compute (fp32), not on bf16 ones."""
    images = torch.rand(2, 3, 224, 448, generator=torch.Generator().manual_seed(4))
    seen: dict[str, torch.Tensor] = {}
    hook = tiny_model.mfvit.vit.register_forward_pre_hook(lambda _m, args: seen.setdefault("amp", args[0]))
    try:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            logits = tiny_model(images)
    finally:
        hook.remove()
    assert logits.dtype == torch.float32
    assert seen["amp"].dtype == torch.float32
    patches = torch.stack([spai.patchify(img) for img in images]).flatten(0, 1)
    assert torch.equal(seen["amp"], _backbone_input(tiny_model, patches, None))


@pytest.mark.parametrize("dtype", AUTOCAST_DTYPES, ids=["bf16", "fp16"])
def test_statistics_and_context_reductions_are_fp32_under_autocast(dtype):
    """The cosine-similarity moments and the context branch's moments of low-precision projector outputs are
    computed in fp32: the same as fp32 arithmetic on the same (rounded) inputs."""
    torch.manual_seed(0)
    fp32 = spai.create_model("spai-tiny").mfvit.features_processor
    views = [torch.randn(3, 4, 16, fp32.patch_projector.projectors[0].norm2.normalized_shape[0]).to(dtype)
             for _ in range(3)]
    ref_stats = fp32.statistics(*(v.float() for v in views))
    ref_context = fp32.original_features_processor(views[0].float())
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
        stats = fp32.statistics(*views)
        context = fp32.original_features_processor(views[0])
    assert stats.dtype == torch.float32
    assert torch.equal(stats, ref_stats)
    # the projectors inside the context branch are Linear layers: autocast's precision; the moments feeding them and
    # the layer-weighted sum are fp32 (before the fix: all of it in the low precision)
    assert (context.float() - ref_context).abs().max() < 0.1


@pytest.mark.parametrize("dtype", AUTOCAST_DTYPES, ids=["bf16", "fp16"])
def test_aggregator_is_fp32_under_autocast(tiny_model, dtype):
    """The aggregator and head run in fp32 under any autocast, as every exported aggregator does: its logits equal
    the fp32 ones exactly for the same features (before the fix: to_kv and the head in bf16/fp16)."""
    gen = torch.Generator().manual_seed(1)
    feats = torch.randn(3, 5, tiny_model.feature_dim, generator=gen)
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[1, 3:] = False
    with torch.no_grad():
        ref, ref_attn = tiny_model.aggregate(feats, mask, return_attention=True)
        with torch.autocast("cpu", dtype=dtype):
            logits, attn = tiny_model.aggregate(feats.to(dtype), mask, return_attention=True)
            logits_fp32_in = tiny_model.aggregate(feats, mask)
    assert logits.dtype == torch.float32
    assert torch.equal(logits_fp32_in, ref)
    assert torch.equal(attn[1, :, 3:], torch.zeros_like(attn[1, :, 3:]))
    ref_rounded = tiny_model.aggregate(feats.to(dtype).float(), mask)
    assert torch.equal(logits, ref_rounded)
