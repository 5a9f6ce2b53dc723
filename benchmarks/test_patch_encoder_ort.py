"""Patch-encoder throughput on CPU: ORT FP32 vs eager PyTorch FP32, side by side (pytest-benchmark).

Run: ``pytest benchmarks/test_patch_encoder_ort.py --benchmark-group-by=param:name`` (spai-fusion-b16 is
``slow``-marked). The ratio is torch time / ORT time of the same group (target >= 1.5x).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CASES = [pytest.param("spai-tiny", 8, id="spai-tiny-bs8"),
         pytest.param("spai-fusion-b16", 4, id="spai-fusion-b16-bs4", marks=pytest.mark.slow)]
_CACHE: dict = {}


def _exported(name: str, tmp_root: Path):
    if name not in _CACHE:
        import spai
        from export.onnx import onnx_from_torch

        torch.manual_seed(0)
        model = spai.create_model(name)
        _CACHE[name] = (model, onnx_from_torch(model, tmp_root / name))
    return _CACHE[name]


@pytest.mark.parametrize("backend", ["torch", "ort"])
@pytest.mark.parametrize(("name", "batch"), CASES)
def test_patch_encoder_throughput(benchmark, tmp_path_factory, name, batch, backend):
    from spai.infer.runners import OrtRunner, TorchRunner, available_cores
    from spai.model.specs import PATCHES

    model, graphs = _exported(name, tmp_path_factory.getbasetemp())
    feed = {PATCHES: np.random.default_rng(0).integers(0, 256, (batch, 3, 224, 224), dtype=np.uint8)}
    torch.set_num_threads(available_cores())
    runner = TorchRunner(model, "patch_encoder", batch) if backend == "torch" else \
        OrtRunner(graphs.patch_encoder, limits={PATCHES: (batch, 3, 224, 224)})
    benchmark.group = f"{name}-bs{batch}"
    with runner:
        rounds = 5 if name == "spai-tiny" else 2
        benchmark.pedantic(runner.infer, args=(feed,), rounds=rounds, warmup_rounds=1, iterations=1)
    benchmark.extra_info.update({"patches_per_call": batch, "img_size": 224, "backend": backend,
                                 "patches_per_s": batch / benchmark.stats.stats.mean})
