"""Shared helpers for the benchmark suite: run modes, peak-memory sampling, FLOP counting, timed steps.

``extra_info`` keys written by the suite (``benchmarks/report.py`` reads them):
``kind`` (encoder / foundation / resolution / aggregator / peak / route / chunk / parity), ``backend``, ``model``,
``device``, ``batch``, ``patches_per_s``, ``flops_per_patch``, ``rss_peak_mb``, ``rss_delta_mb``, ``cuda_peak_mb``,
``probe_gflops`` (the matmul probe around a route case) and case-specific keys.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psutil
import torch

from spai.infer.runners import available_cores as cpu_threads  # noqa: F401  (one definition of it)

MB = 1024 * 1024


# CPU route benchmark (benchmarks/test_cpu_routes.py): images as H x W, multiples of 224 so every pixel is in a
# patch; 4:3 / 3:2 photo shapes. Nominal megapixels -> (height, width): 4, 20, 54 and 234 patches.
ROUTE_IMAGES: dict[float, tuple[int, int]] = {0.25: (448, 448), 1: (896, 1120), 3: (1344, 2016), 12: (3024, 4032)}
ALL_CONTENDERS = ("original-1", "original-cfg", "torch-fp32", "torch-bf16", "ort-fp32", "ort-int8")
ROUTES_ONLY = tuple(c for c in ALL_CONTENDERS if not c.startswith("original"))
BF16_KEEP = ("bf16-all", "bf16-kept")  # every GEMM in bf16 / the bf16 route (its patch embedding in fp32)


@dataclass(frozen=True)
class RouteSizes:
    """Which contenders score which image sizes for one model (the rest is sized down; docs/benchmarks.md)."""

    sizes: tuple[float, ...]
    contenders: tuple[str, ...] = ALL_CONTENDERS
    # contenders that also score the large sizes (the others stop at ``large_from``)
    large: tuple[str, ...] = ALL_CONTENDERS
    large_from: float = 12
    # the original algorithm with its chunk of 400 holds all patches' activations at once: skip it beyond this
    cfg_chunk_max_mp: float = 1

    def cases(self) -> list[tuple[str, float]]:
        """(contender, nominal MP), contender by contender (one worker process alive at a time)."""
        out = []
        for contender in self.contenders:
            for mp in self.sizes:
                if mp >= self.large_from and contender not in self.large:
                    continue
                if contender == "original-cfg" and mp > self.cfg_chunk_max_mp:
                    continue
                out.append((contender, mp))
        return out


@dataclass(frozen=True)
class BenchMode:
    """Sizes and repetition counts of one run mode (quick = CI default, moderate, full = manual)."""

    name: str
    rounds: int  # timed rounds for cheap cases (< 1 s per step)
    encoder_models: tuple[str, ...]
    batches: dict[str, tuple[int, ...]]  # model name -> batch sizes for the patch-encoder grid
    resolution_mp: dict[str, tuple[float, ...]]  # model name -> megapixel sizes scored end to end
    aggregator_lengths: tuple[int, ...]
    foundation_batch: int = 1
    gemm_size: int = 2048
    gpu_batches: tuple[int, ...] = (1, 8, 32, 128)
    routes: dict[str, RouteSizes] = field(default_factory=dict)  # model -> sizes of the CPU route benchmark
    chunks: tuple[int, ...] = ()  # chunk sizes measured per route (spai-b16, one 8-patch image)
    parity_patches: int = 16  # random patches of the route parity check (plus the generated corpus)
    parity_max_mp: float = 1.0  # corpus images up to this size in the route parity check (the 2.4 MP one: full)
    extra: dict[str, Any] = field(default_factory=dict)


MODES: dict[str, BenchMode] = {
    "quick": BenchMode(
        "quick", rounds=3, encoder_models=("spai-tiny",), batches={"spai-tiny": (1, 8)},
        resolution_mp={"spai-tiny": (0.25, 1, 4, 16, 64)}, aggregator_lengths=(1, 16, 256, 4096),
        foundation_batch=1, gemm_size=1024, gpu_batches=(1, 32),
        routes={"spai-tiny": RouteSizes((0.25,))}, parity_patches=8),
    "moderate": BenchMode(
        "moderate", rounds=5, encoder_models=("spai-tiny", "spai-fusion-b16"),
        batches={"spai-tiny": (1, 8, 16), "spai-fusion-b16": (1, 4)},
        resolution_mp={"spai-tiny": (0.25, 1, 4, 16, 64), "spai-fusion-b16": (0.25, 1)},
        aggregator_lengths=(1, 4, 16, 64, 256, 1024, 4096), foundation_batch=4, gemm_size=2048,
        # one locked run per full-size model fits in ~25 min on 2 cores: 12 MP (234 patches) is scored by every
        # route for spai-b16, by the original and the fastest route only for spai-fusion-b16
        routes={"spai-tiny-trained": RouteSizes((0.25, 1, 3, 12)),
                "spai-b16": RouteSizes((0.25, 1, 3, 12), large=ROUTES_ONLY + ("original-1",)),
                "spai-fusion-b16": RouteSizes((0.25, 1, 3, 12), large=("original-1", "ort-int8"))},
        chunks=(1, 2, 4, 8)),
    "full": BenchMode(
        "full", rounds=10, encoder_models=("spai-tiny", "spai-fusion-b16"),
        batches={"spai-tiny": (1, 8, 16, 32), "spai-fusion-b16": (1, 4, 8, 16)},
        resolution_mp={"spai-tiny": (0.25, 1, 4, 16, 64), "spai-fusion-b16": (0.25, 1, 4)},
        aggregator_lengths=(1, 4, 16, 64, 256, 1024, 4096), foundation_batch=8, gemm_size=4096,
        gpu_batches=(1, 8, 32, 128, 256),
        routes={"spai-tiny-trained": RouteSizes((0.25, 1, 3, 12)), "spai-b16": RouteSizes((0.25, 1, 3, 12)),
                "spai-fusion-b16": RouteSizes((0.25, 1, 3, 12), cfg_chunk_max_mp=3)},
        chunks=(1, 2, 4, 8, 16), parity_patches=64, parity_max_mp=3.0),
}


def matmul_probe(n: int = 1024, repeats: int = 10) -> float:
    """GFLOP/s of the best of ``repeats`` n x n fp32 ``torch.mm`` (about 11 ms each on 2 cores): sampled around
    every CPU route case, so that the report can refuse ratios from a run during which the machine got loaded."""
    gen = torch.Generator().manual_seed(7)
    a, b = torch.randn(n, n, generator=gen), torch.randn(n, n, generator=gen)
    out = torch.empty(n, n)
    torch.mm(a, b, out=out)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best / 1e9


def device_label(device: torch.device) -> str:
    """Short device name for result folders and tables, e.g. ``cpu-2core`` or ``cuda-NVIDIA-H100``."""
    if device.type == "cuda":
        return "cuda-" + torch.cuda.get_device_name(device).replace(" ", "-")
    return f"cpu-{cpu_threads()}core"


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels so the timed step includes them."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PeakRSS:
    """Samples this process's resident set size in a thread; ``peak`` and ``start`` are bytes."""

    def __init__(self, interval_s: float = 0.002) -> None:
        self.interval_s = interval_s
        self._proc = psutil.Process()
        self._stop = threading.Event()
        self.start = self.peak = 0
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            time.sleep(self.interval_s)

    def __enter__(self) -> PeakRSS:
        self.start = self.peak = self._proc.memory_info().rss
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)


@contextlib.contextmanager
def measured_memory(info: dict[str, Any], device: torch.device) -> Iterator[None]:
    """Record ``rss_peak_mb`` / ``rss_delta_mb`` (and ``cuda_peak_mb`` on a GPU) of the enclosed block in ``info``."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with PeakRSS() as rss:
        yield
    info["rss_peak_mb"] = round(rss.peak / MB, 1)
    info["rss_delta_mb"] = round((rss.peak - rss.start) / MB, 1)
    if device.type == "cuda":
        info["cuda_peak_mb"] = round(torch.cuda.max_memory_allocated(device) / MB, 1)


def run_benchmark(benchmark: Any, step: Callable[[], Any], device: torch.device, *, rounds: int,
                  warmup_rounds: int = 1, items: int = 1, **info: Any) -> float:
    """Time ``step`` with ``benchmark.pedantic`` (CUDA synchronised inside the step), fill ``extra_info``.

    ``items`` is what one step processes (patches, images); returns the median seconds per step.
    """

    def timed() -> None:
        step()
        synchronize(device)

    with measured_memory(info, device):
        benchmark.pedantic(timed, rounds=rounds, warmup_rounds=warmup_rounds, iterations=1)
    median = float(benchmark.stats.stats.median)
    info.update(device=device_label(device), items=items, items_per_s=items / median,
                threads=torch.get_num_threads())
    benchmark.extra_info.update(info)
    return median


@contextlib.contextmanager
def countable_attention() -> Iterator[None]:
    """Route attention through plain matmuls so :class:`FlopCounterMode` sees it (the CPU SDPA kernel and
    ``nn.MultiheadAttention``'s fast path are invisible to the counter)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    was = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(was)


@torch.no_grad()
def count_flops(fn: Callable[..., Any], *args: Any) -> int:
    """FLOPs of ``fn(*args)`` counted by ``torch.utils.flop_counter`` (matmuls, convolutions, attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    with countable_attention(), FlopCounterMode(display=False) as counter:
        fn(*args)
    return int(counter.get_total_flops())
