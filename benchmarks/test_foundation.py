"""Foundation measurement: per-patch cost of ``encode_patches`` (torch, CPU) relative to ONE pass of the bare
open_clip visual tower on the same batch. Expected about 3x (three views); the report divides the two medians.

FLOPs are counted with FlopCounterMode and split into filter / backbone / FRE so the ratio can be explained.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import BenchMode, countable_attention, run_benchmark

FOUNDATION_MODELS = ("spai-fusion-b16", "spai-b16")


@torch.no_grad()
def flop_breakdown(model: torch.nn.Module, x: torch.Tensor) -> dict[str, int]:
    """FLOPs of one bare CLIP pass and of encode_patches split into filter, backbone (3 views) and FRE.

    The FRE runs through ``forward_stacked`` (not ``__call__``), so it is the total minus filter and backbone.
    """
    visual = model.mfvit.vit.clip.visual
    normalised = (x - model.mfvit.mean) / model.mfvit.std
    with countable_attention(), FlopCounterMode(display=False) as bare:
        visual(normalised)
    with countable_attention(), FlopCounterMode(display=False) as full:
        model.encode_patches(x)
    by_module = full.get_flop_counts()

    def total(key: str) -> int:
        return int(sum(by_module.get(key, {}).values()))

    return {"bare_clip_flops": int(bare.get_total_flops()), "encode_flops": int(full.get_total_flops()),
            "filter_flops": total("MFViT.filter"), "backbone_flops": total("MFViT.vit"),
            "fre_flops": int(full.get_total_flops()) - total("MFViT.filter") - total("MFViT.vit")}


def _models(mode: BenchMode) -> tuple[str, ...]:
    return FOUNDATION_MODELS[:1] if mode.name == "quick" else FOUNDATION_MODELS


@pytest.mark.parametrize("which", ["bare-clip", "encode-patches"])
@pytest.mark.parametrize("name", FOUNDATION_MODELS)
def test_foundation_cpu(benchmark, name: str, which: str, bench_mode: BenchMode, spai_model: Callable) -> None:
    if name not in _models(bench_mode):
        pytest.skip(f"{name} runs in moderate/full mode only")
    benchmark.group = f"foundation-{name}"
    model = spai_model(name)
    batch = bench_mode.foundation_batch
    x = torch.rand(batch, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    flops = {k: v // batch for k, v in flop_breakdown(model, x).items()}
    if which == "bare-clip":
        visual, normalised = model.mfvit.vit.clip.visual, (x - model.mfvit.mean) / model.mfvit.std
        fn = lambda: visual(normalised)  # noqa: E731
    else:
        fn = lambda: model.encode_patches(x)  # noqa: E731

    def step() -> None:
        with torch.inference_mode():
            fn()

    rounds = max(2, bench_mode.rounds // 2)
    run_benchmark(benchmark, step, torch.device("cpu"), rounds=rounds, items=batch, kind="foundation",
                  backend=which, model=name, batch=batch, **flops)
