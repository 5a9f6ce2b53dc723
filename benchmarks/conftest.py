"""Benchmark-suite configuration: run modes, threads, skips and shared (session-cached) models.

Modes: quick (default; CI, about a minute on 2 cores), ``--bench-mode moderate``, ``--bench-full`` (manual).
``SPAI_BENCH_MODE=quick|moderate|full`` sets the default; ``SPAI_BENCH_QUICK=1`` forces quick.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `pytest benchmarks/` from anywhere: make `spai`, `export`, `benchmarks` importable
    sys.path.insert(0, str(ROOT))

from benchmarks.common import MODES, BenchMode, cpu_threads  # noqa: E402

torch.set_num_threads(cpu_threads())


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("spai-bench", "SPAI benchmark sizes")
    group.addoption("--bench-mode", choices=sorted(MODES), default=None,
                    help="quick (default, CI), moderate or full (manual, long)")
    group.addoption("--bench-full", action="store_true", help="shorthand for --bench-mode full")


def _mode_name(config: pytest.Config) -> str:
    if config.getoption("--bench-full"):
        return "full"
    if config.getoption("--bench-mode"):
        return str(config.getoption("--bench-mode"))
    if os.environ.get("SPAI_BENCH_QUICK", "") not in ("", "0"):
        return "quick"
    return os.environ.get("SPAI_BENCH_MODE", "quick")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (skipped without one)")
    config._spai_bench_mode = MODES[_mode_name(config)]  # type: ignore[attr-defined]


def pytest_report_header(config: pytest.Config) -> str:
    mode = config._spai_bench_mode  # type: ignore[attr-defined]
    return f"spai benchmarks: mode={mode.name}, torch threads={torch.get_num_threads()}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    mode = config._spai_bench_mode  # type: ignore[attr-defined]
    no_gpu = pytest.mark.skip(reason="no CUDA GPU on this machine (torch.cuda.is_available() is False)")
    quick = pytest.mark.skip(reason=f"full-size case: not run in {mode.name} mode (use --bench-mode moderate)")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(no_gpu)
        if "slow" in item.keywords and mode.name == "quick":
            item.add_marker(quick)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrise by the run mode's sizes: ``model_batch``, ``gpu_batch``, ``res_case``, ``agg_length``."""
    mode: BenchMode = metafunc.config._spai_bench_mode  # type: ignore[attr-defined]
    if "model_batch" in metafunc.fixturenames:
        cases = [(m, b) for m in mode.encoder_models for b in mode.batches[m]]
        metafunc.parametrize("model_batch", cases, ids=[f"{m}-bs{b}" for m, b in cases])
    if "gpu_batch" in metafunc.fixturenames:
        metafunc.parametrize("gpu_batch", mode.gpu_batches, ids=[f"bs{b}" for b in mode.gpu_batches])
    if "res_case" in metafunc.fixturenames:
        cases = [(m, mp) for m, sizes in mode.resolution_mp.items() for mp in sizes]
        metafunc.parametrize("res_case", cases, ids=[f"{m}-{mp:g}MP" for m, mp in cases])
    if "agg_length" in metafunc.fixturenames:
        metafunc.parametrize("agg_length", mode.aggregator_lengths, ids=[f"L{n}" for n in mode.aggregator_lengths])


@pytest.fixture(scope="session")
def bench_mode(request: pytest.FixtureRequest) -> BenchMode:
    """The active :class:`BenchMode`."""
    return request.config._spai_bench_mode  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def spai_model() -> Callable[[str, str], torch.nn.Module]:
    """``spai_model(name, device="cpu")``: a seeded random-weight model in eval mode, cached for the session."""
    import spai

    cache: dict[tuple[str, str], torch.nn.Module] = {}

    def get(name: str, device: str = "cpu") -> torch.nn.Module:
        if (name, device) not in cache:
            torch.manual_seed(0)
            cache[(name, device)] = spai.create_model(name, device=device)
        return cache[(name, device)]

    return get


def _try_fp16(encoder_onnx: Path) -> None:
    """Write ``patch_encoder.fp16.onnx`` next to the fp32 file when export.fp16 can (else ort-fp16 skips)."""
    try:
        from export.fp16 import patch_encoder_fp16

        patch_encoder_fp16(None, encoder_onnx, route="convert")
    except Exception as e:  # reported by the ort-fp16 skip reason
        (encoder_onnx.parent / "fp16_error.txt").write_text(f"{type(e).__name__}: {e}")


@pytest.fixture(scope="session")
def onnx_exports(tmp_path_factory: pytest.TempPathFactory, spai_model: Callable) -> Callable[[str], Path]:
    """``onnx_exports(name) -> folder`` with ``export.onnx.onnx_from_torch``'s files; skips if export is absent."""
    try:
        from export.onnx import onnx_from_torch
    except Exception as e:  # the export module is written by another workstream
        pytest.skip(f"export.onnx.onnx_from_torch is not importable yet ({type(e).__name__}: {e})")
    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in cache:
            out = tmp_path_factory.mktemp(f"onnx-{name}")
            exported = onnx_from_torch(spai_model(name), out)
            _try_fp16(exported.patch_encoder)
            cache[name] = out
        return cache[name]

    return get


@pytest.fixture(scope="session")
def encoder_flops(spai_model: Callable) -> Callable[[str], dict[str, int]]:
    """``encoder_flops(name)``: FLOPs per patch (FlopCounterMode, batch 1) of ``encode_patches`` and of the
    baseline (which runs four CLIP passes; its torch.fft filtering is not counted by the counter)."""
    from benchmarks.baseline import UpstreamBaseline
    from benchmarks.common import count_flops

    cache: dict[str, dict[str, int]] = {}

    def get(name: str) -> dict[str, int]:
        if name not in cache:
            model = spai_model(name)
            x = torch.rand(1, 3, 224, 224)
            base = UpstreamBaseline(model)
            try:
                cache[name] = {"model": count_flops(model.encode_patches, x), "baseline": count_flops(base, x)}
            finally:
                base.close()
        return cache[name]

    return get
