"""Shared helpers for the benchmark suite: run modes, peak-memory sampling, FLOP counting, timed steps.

``extra_info`` keys written by the suite (``benchmarks/report.py`` reads them):
``kind`` (encoder / foundation / resolution / aggregator / peak), ``backend``, ``model``, ``device``, ``batch``,
``patches_per_s``, ``flops_per_patch``, ``rss_peak_mb``, ``rss_delta_mb``, ``cuda_peak_mb`` and case-specific keys.
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

from spai.runners import available_cores as cpu_threads  # noqa: F401  (one definition of it)

MB = 1024 * 1024


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
    extra: dict[str, Any] = field(default_factory=dict)


MODES: dict[str, BenchMode] = {
    "quick": BenchMode(
        "quick", rounds=3, encoder_models=("spai-tiny",), batches={"spai-tiny": (1, 8)},
        resolution_mp={"spai-tiny": (0.25, 1, 4, 16, 64)}, aggregator_lengths=(1, 16, 256, 4096),
        foundation_batch=1, gemm_size=1024, gpu_batches=(1, 32)),
    "moderate": BenchMode(
        "moderate", rounds=5, encoder_models=("spai-tiny", "spai-fusion-b16"),
        batches={"spai-tiny": (1, 8, 16), "spai-fusion-b16": (1, 4)},
        resolution_mp={"spai-tiny": (0.25, 1, 4, 16, 64), "spai-fusion-b16": (0.25, 1)},
        aggregator_lengths=(1, 4, 16, 64, 256, 1024, 4096), foundation_batch=4, gemm_size=2048),
    "full": BenchMode(
        "full", rounds=10, encoder_models=("spai-tiny", "spai-fusion-b16"),
        batches={"spai-tiny": (1, 8, 16, 32), "spai-fusion-b16": (1, 4, 8, 16)},
        resolution_mp={"spai-tiny": (0.25, 1, 4, 16, 64), "spai-fusion-b16": (0.25, 1, 4)},
        aggregator_lengths=(1, 4, 16, 64, 256, 1024, 4096), foundation_batch=8, gemm_size=4096,
        gpu_batches=(1, 8, 32, 128, 256)),
}


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
