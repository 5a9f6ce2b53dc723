"""bf16 GEMMs on CPU (oneDNN with AVX-512 BF16 or AMX), everything else fp32: the torch ``bf16`` route.

:class:`Bf16Gemms` is a ``TorchFunctionMode``: inside it every ``F.linear`` (``nn.Linear``, the backbone's
attention projections, the FRE's projectors, gates and fusion layers) and ``F.conv2d`` (the patch embedding) runs
with bf16 inputs and weights (weights cast once, fp32 accumulation inside oneDNN) and returns fp32. Nothing else is
touched, so the spectral filter (plain ``torch.matmul``), the normalisation, LayerNorm, GELU, the attention core
(``scaled_dot_product_attention``: QK^T, softmax, AV), the cosine-similarity statistics and the aggregator stay
fp32 -- SPAI's statistics are differences of near-1 cosine similarities, which bf16 LayerNorm outputs would blur.
The route also keeps the backbone's patch embedding in fp32 (:func:`bf16_fp32_layers`).

Under ``torch.autocast`` (training's ``TRAIN.AMP``, the GPU's torch fp16 / bf16 routes, the python-torch Triton
models) the model keeps the same parts in fp32 itself: :func:`full_precision` regions around the spectral views and
their normalisation, the statistics, the context branch's reductions, the gating arithmetic and the aggregator, so
that every precision computes the views the model was trained on and the engines compute.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Collection, Iterator, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812  (torch's own spelling)
from torch import nn
from torch.overrides import TorchFunctionMode

from spai.errors import ConfigError

BF16 = torch.bfloat16


@contextlib.contextmanager
def full_precision(*tensors: torch.Tensor) -> Iterator[tuple[torch.Tensor, ...]]:
    """Autocast off (fp32 matmuls) for a region that must compute exactly as the trained model and the exported
    graphs do -- the spectral views, the normalisation, the statistics, the aggregator -- whatever mixed precision
    the caller runs the rest under (``torch.autocast`` casts ``matmul`` to fp16/bf16, on CPU too); yields
    ``tensors`` in fp32. Without an active autocast it does nothing and yields them as they are, so traced ONNX
    graphs are unchanged and a model converted as a whole (``model.half()``) keeps its dtype."""
    device = tensors[0].device.type
    if not torch.is_autocast_enabled(device):
        yield tensors
        return
    with torch.autocast(device, enabled=False):
        yield tuple(t.float() for t in tensors)


def as_fp32(x: torch.Tensor) -> torch.Tensor:
    """``x`` in fp32 under an active autocast (the input of a :func:`full_precision` region); otherwise ``x`` itself:
    no Cast node in a traced graph, and a model converted as a whole (``model.half()``) keeps its dtype."""
    if x.dtype == torch.float32 or not torch.is_autocast_enabled(x.device.type):
        return x
    return x.float()


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

    ``weights``: the GEMM weights to pre-cast, by parameter name (:func:`gemm_weights`; a module: its own; others
    are cast per call). ``keep_fp32``: names of those whose layers stay fp32 (the ones whose bf16 rounding moves a
    trained model's logits). ``flops`` counts the multiply-adds x 2 done in bf16, by parameter name
    (``"(unnamed)"`` for weights cast per call), for :func:`precision_table`.
    """

    def __init__(self, weights: Mapping[str, torch.Tensor] | nn.Module, keep_fp32: Collection[str] = ()) -> None:
        super().__init__()
        weights = gemm_weights(weights) if isinstance(weights, nn.Module) else weights
        unknown = set(keep_fp32) - set(weights)
        if unknown:
            raise ConfigError(f"keep_fp32 names no GEMM weight of this model: {sorted(unknown)}; the names are "
                              "gemm_weights(model)'s (parameter names of its Linear / Conv2d weights).")
        self.names = {id(p): name for name, p in weights.items()}
        self.kept = {id(p) for name, p in weights.items() if name in keep_fp32}
        self.cache = {id(p): p.detach().to(BF16) for name, p in weights.items() if name not in keep_fp32}
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
        if func in (F.linear, F.conv2d) and id(list(_args(args, kwargs, ("input", "weight")))[1]) in self.kept:
            return func(*args, **kwargs)  # a layer kept in fp32
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


def bf16_fp32_layers(model: nn.Module) -> frozenset[str]:
    """The GEMM weights the torch bf16 route keeps in fp32: the backbone's patch embedding (its convolutions).

    Its input is the normalised pixels of the spectral views, and bf16 keeps 8 significant bits of each: that
    rounds away fine high-frequency detail SPAI's statistics read, so on a trained model this one layer in bf16
    moves the probabilities about as much as every GEMM together, for a small share of the FLOPs.
    :func:`bf16_keep_fp32` finds such layers by measurement on a gate set; this rule is what it found, fixed, so
    that the runner, the precision table and the route gate agree without measuring at load time.
    """
    backbone = getattr(getattr(model, "mfvit", None), "vit", None)
    prefix = next((name for name, module in model.named_modules() if module is backbone), None)
    if backbone is None or prefix is None:
        raise ConfigError(f"the bf16 route keeps a SPAI backbone's patch embedding in fp32, and this "
                          f"{type(model).__name__} has no backbone (model.mfvit.vit); use spai.create_model(...).")
    names = frozenset(f"{prefix}.{name}.weight" for name, module in backbone.named_modules()
                      if isinstance(module, nn.Conv2d))
    if not names:
        raise ConfigError(f"the backbone {type(backbone).__name__} has no convolutional patch embedding to keep in "
                          "fp32 for the bf16 route; use --precision fp32.")
    return names


def precision_table(model: Any, patches: torch.Tensor, keep_fp32: Collection[str] | None = None) -> dict[str, Any]:
    """Which layers one ``encode_patches(patches)`` call runs in bf16 with ``keep_fp32`` in fp32 (None: the
    route's, :func:`bf16_fp32_layers`), their share of its FLOPs (FlopCounterMode, attention through the math
    kernel so that it is counted) and what stays fp32."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    keep = bf16_fp32_layers(model) if keep_fp32 is None else frozenset(keep_fp32)
    mode = Bf16Gemms(model, keep)
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
    kept = [f"{name.rsplit('.', 1)[0]} (GEMM kept in fp32)" for name in sorted(keep)]
    return {"precision": "bf16", "bf16_flops": bf16, "total_flops": total, "bf16_share": bf16 / max(total, 1),
            "bf16_layers": dict(sorted(layers.items())), "fp32_gemms": sorted(keep), "fp32": kept + list(FP32_PARTS)}


FP32_PARTS = ("spectral filter (torch.matmul with the DFT bases)", "x / 255 and mean/std normalisation",
              "LayerNorm (backbone ln_1/ln_2/ln_pre/ln_post, FRE projector and fusion norms)", "GELU / sigmoid",
              "attention core (scaled_dot_product_attention: QK^T, softmax, AV)", "early-fusion gating arithmetic",
              "cosine-similarity statistics (mean, std, max, min)", "context branch reductions and layer softmax",
              "aggregator and head (separate fp32 runner)")


def gemm_groups(weights: Mapping[str, torch.Tensor]) -> dict[str, set[str]]:
    """GEMM weight names grouped by layer kind, block indices folded (``...resblocks.*.mlp.c_fc.weight``): the
    unit :func:`bf16_keep_fp32` keeps in fp32, so that the rule reads the same for every depth."""
    groups: dict[str, set[str]] = {}
    for name in weights:
        groups.setdefault(re.sub(r"\.\d+\.", ".*.", name), set()).add(name)
    return groups


def bf16_keep_fp32(probabilities: Callable[[Bf16Gemms | None], np.ndarray], weights: Mapping[str, torch.Tensor],
                   limit: float = 1e-2, margin: float = 0.5) -> tuple[set[str], list[dict[str, Any]]]:
    """The GEMM weights to keep in fp32 so that bf16 moves no probability by more than ``margin * limit``: each
    layer group's own error (it alone in bf16), then greedy, the worst group first, until the rest in bf16 is within
    it. ``probabilities(mode)``: the gate set's probabilities with ``mode`` active (None: fp32). Returns (the names
    to keep, one step per kept group: its name, its own error, max |dp| after keeping it)."""
    reference = probabilities(None)
    groups = gemm_groups(weights)
    names = set(weights)

    def error(keep: set[str]) -> float:
        return float(np.abs(probabilities(Bf16Gemms(weights, keep)) - reference).max())

    alone = {g: error(names - members) for g, members in groups.items()}
    kept: set[str] = set()
    steps: list[dict[str, Any]] = [{"group": None, "alone": None, "max_abs_dprob": error(kept)}]
    for group in sorted(alone, key=alone.__getitem__, reverse=True):
        if steps[-1]["max_abs_dprob"] <= margin * limit:
            break
        kept |= groups[group]
        steps.append({"group": group, "alone": alone[group], "max_abs_dprob": error(kept)})
    return kept, steps


def flop_share(model: Any, patches: torch.Tensor, keep_fp32: Collection[str] | None = None) -> float:
    """Share of one ``encode_patches(patches)`` call's FLOPs that run in bf16 with ``keep_fp32`` kept in fp32
    (None: the route's, :func:`bf16_fp32_layers`; empty: every GEMM in bf16)."""
    return float(precision_table(model, patches, keep_fp32)["bf16_share"])
