"""bf16 GEMMs on CPU (oneDNN with AVX-512 BF16 or AMX), everything else fp32: the torch ``bf16`` route.

:class:`Bf16Gemms` is a ``TorchFunctionMode``: inside it every ``F.linear`` (``nn.Linear``, the backbone's
attention projections, the FRE's projectors, gates and fusion layers) and ``F.conv2d`` (the patch embedding) runs
with bf16 inputs and weights (weights cast once, fp32 accumulation inside oneDNN) and returns fp32. Nothing else is
touched, so the spectral filter (plain ``torch.matmul``), the normalisation, LayerNorm, GELU, the attention core
(``scaled_dot_product_attention``: QK^T, softmax, AV), the cosine-similarity statistics and the aggregator stay
fp32 -- SPAI's statistics are differences of near-1 cosine similarities, which bf16 LayerNorm outputs would blur.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

BF16 = torch.bfloat16


def gemm_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The GEMM weights :class:`Bf16Gemms` casts: every ``nn.Linear`` / ``nn.Conv2d`` weight and every
    ``MultiheadAttention.in_proj_weight`` outside the spectral filter, by parameter name."""
    names: dict[str, torch.Tensor] = {}
    for prefix, module in model.named_modules():
        params = []
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            params.append(("weight", module.weight))
        if isinstance(module, nn.MultiheadAttention) and module.in_proj_weight is not None:
            params.append(("in_proj_weight", module.in_proj_weight))
        for name, p in params:
            names[f"{prefix}.{name}" if prefix else name] = p
    return names


class Bf16Gemms(TorchFunctionMode):
    """Run linear layers and convolutions in bf16 (outputs fp32) while the mode is active.

    ``model``: whose weights to pre-cast (others are cast per call). ``flops`` counts the multiply-adds x 2 done in
    bf16, by parameter name (``"(unnamed)"`` for weights cast per call), for :func:`precision_table`.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.names = {id(p): name for name, p in gemm_weights(model).items()}
        self.cache = {id(p): p.detach().to(BF16) for p in gemm_weights(model).values()}
        self.flops: dict[str, int] = {}
        self.count = False

    def _weight(self, w: torch.Tensor) -> torch.Tensor:
        cached = self.cache.get(id(w))
        return cached if cached is not None else w.detach().to(BF16)

    def _tally(self, w: torch.Tensor, out: torch.Tensor, per_output: int) -> None:
        name = self.names.get(id(w), "(unnamed)")
        self.flops[name] = self.flops.get(name, 0) + 2 * out.numel() * per_output

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is F.linear:
            x, w, b = _args(args, kwargs, ("input", "weight", "bias"))
            if x.dtype == torch.float32 and x.device.type == "cpu":
                out = F.linear(x.to(BF16), self._weight(w), None if b is None else b.to(BF16)).float()
                if self.count:
                    self._tally(w, out, w.shape[-1])
                return out
        if func is F.conv2d:
            x, w, b = _args(args, kwargs, ("input", "weight", "bias"))
            rest = args[3:]
            if x.dtype == torch.float32 and x.device.type == "cpu":
                extra = {k: v for k, v in kwargs.items() if k not in ("input", "weight", "bias")}
                out = F.conv2d(x.to(BF16), self._weight(w), None if b is None else b.to(BF16), *rest,
                               **extra).float()
                if self.count:
                    self._tally(w, out, w[0].numel())
                return out
        return func(*args, **kwargs)


def _args(args: tuple, kwargs: dict, names: tuple[str, ...]) -> Iterator[Any]:
    for i, name in enumerate(names):
        yield args[i] if i < len(args) else kwargs.get(name)


def precision_table(model: Any, patches: torch.Tensor) -> dict[str, Any]:
    """Which layers one ``encode_patches(patches)`` call runs in bf16, their share of its FLOPs (FlopCounterMode,
    attention through the math kernel so that it is counted) and what stays fp32."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    mode = Bf16Gemms(model)
    mode.count = True
    with torch.no_grad(), mode:
        model.encode_patches(patches)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model.encode_patches(patches)
    layers: dict[str, int] = {}
    for name, flops in mode.flops.items():
        key = re.sub(r"\.\d+\.", ".*.", name.rsplit(".", 1)[0])
        layers[key] = layers.get(key, 0) + flops
    total, bf16 = int(counter.get_total_flops()), sum(mode.flops.values())
    return {"precision": "bf16", "bf16_flops": bf16, "total_flops": total, "bf16_share": bf16 / max(total, 1),
            "bf16_layers": dict(sorted(layers.items())), "fp32": list(FP32_PARTS)}


FP32_PARTS = ("spectral filter (torch.matmul with the DFT bases)", "x / 255 and mean/std normalisation",
              "LayerNorm (backbone ln_1/ln_2/ln_pre/ln_post, FRE projector and fusion norms)", "GELU / sigmoid",
              "attention core (scaled_dot_product_attention: QK^T, softmax, AV)", "early-fusion gating arithmetic",
              "cosine-similarity statistics (mean, std, max, min)", "context branch reductions and layer softmax",
              "aggregator and head (separate fp32 runner)")
