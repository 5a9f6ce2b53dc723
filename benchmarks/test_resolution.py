"""Cost versus resolution: end-to-end ``score_images`` of one image at 0.25 ... 64 megapixels (CPU).

Images are squares of k x 224 pixels (k = round(sqrt(MP) / 0.224)), so every pixel lands in a patch and seconds
per megapixel compares like with like; the actual pixel count is in ``extra_info``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import BenchMode, run_benchmark
from spai.infer.runners import torch_chunk

ROOT = Path(__file__).resolve().parent.parent

PATCH = 224


def image_side(megapixels: float) -> int:
    """Side of a square image of about ``megapixels``, a multiple of the patch size."""
    return PATCH * max(2, round((megapixels * 1e6) ** 0.5 / PATCH))


def random_image(side: int, seed: int = 2) -> torch.Tensor:
    """3 x side x side uint8 noise, generated as uint8 (torch.randint would pass through int64: 8x the memory)."""
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(0, 256, size=(3, side, side), dtype=np.uint8))


def _rounds(mode: BenchMode, name: str, megapixels: float) -> tuple[int, int]:
    """(rounds, warmup_rounds): one round for the expensive cases."""
    if name != "spai-tiny" and megapixels >= 1 or megapixels >= 16:
        return 1, 0
    return max(2, mode.rounds // 2), 1


def test_score_image_cpu(benchmark, res_case: tuple[str, float], bench_mode: BenchMode,
                         spai_model: Callable) -> None:
    name, megapixels = res_case
    benchmark.group = f"resolution-{name}"
    model = spai_model(name)
    side = image_side(megapixels)
    image = random_image(side)
    rounds, warmup = _rounds(bench_mode, name, megapixels)
    actual_mp = side * side / 1e6
    patches = (side // PATCH) ** 2
    median = run_benchmark(benchmark, lambda: model.score_images([image]), torch.device("cpu"), rounds=rounds,
                           warmup_rounds=warmup, items=1, kind="resolution", backend="torch-fp32", model=name,
                           nominal_mp=megapixels, megapixels=actual_mp, side=side, patches=patches,
                           chunk=torch_chunk(model))
    benchmark.extra_info.update(seconds_per_mp=median / actual_mp, seconds_per_patch=median / patches)


CHILD = textwrap.dedent("""
    import json, sys, time
    sys.path.insert(0, {root!r})
    from benchmarks.common import PeakRSS  # sampled RSS: ru_maxrss would include the parent's RSS at fork
    with PeakRSS() as whole:
        import numpy as np, torch
        import spai
        torch.set_num_threads({threads})
        torch.manual_seed(0)
        model = spai.create_model({name!r})
        image = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, {side}, {side}), dtype=np.uint8))
        with PeakRSS() as scoring:
            start = time.perf_counter()
            model.score_images([image])
            seconds = time.perf_counter() - start
    print(json.dumps({{"seconds": seconds, "rss_before_score_mb": scoring.start / 2**20,
                      "rss_peak_mb": whole.peak / 2**20}}))
""")



def test_score_64mp_fresh_process_rss(benchmark, bench_mode: BenchMode) -> None:
    """64 MP scored in a fresh interpreter: the whole-process RSS peak (sampled) the < 4 GB target is about."""
    name, side = "spai-tiny", image_side(64)
    benchmark.group = "resolution-64mp-rss"
    code = CHILD.format(root=str(ROOT), threads=torch.get_num_threads(), name=name, side=side)
    result: dict[str, float] = {}

    def step() -> None:
        out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
        result.update(json.loads(out.stdout.strip().splitlines()[-1]))

    benchmark.pedantic(step, rounds=1, warmup_rounds=0, iterations=1)
    benchmark.extra_info.update(kind="rss64", model=name, megapixels=side * side / 1e6, side=side,
                                rss_peak_mb=round(result["rss_peak_mb"], 1), score_seconds=result["seconds"],
                                rss_before_score_mb=round(result["rss_before_score_mb"], 1))
