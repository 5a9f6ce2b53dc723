"""Benchmark-suite configuration: run modes, threads, skips and shared (session-cached) models.

Modes: quick (default; CI, about a minute on 2 cores), ``--bench-mode moderate``, ``--bench-full`` (manual).
``SPAI_BENCH_MODE=quick|moderate|full`` sets the default; ``SPAI_BENCH_QUICK=1`` forces quick.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `pytest benchmarks/` from anywhere: make `spai`, `export`, `benchmarks` importable
    sys.path.insert(0, str(ROOT))
if str(ROOT / "tools") not in sys.path:  # the clean-tree guard, imported by name as tests/conftest.py does
    sys.path.insert(0, str(ROOT / "tools"))

import clean_tree  # noqa: E402  (tools/clean_tree.py)

from benchmarks.common import BF16_KEEP, MODES, ROUTES_ONLY, BenchMode, cpu_threads  # noqa: E402

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
    clean_tree.register(config, ROOT)  # `make test`: fail a run that wrote tracked files


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
    """Parametrise by the run mode's sizes: ``model_batch``, ``gpu_batch``, ``res_case``, ``agg_length``, the route
    cases (``route_case``, ``chunk_case``, ``parity_model``, ``bf16_case``)."""
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
    if "route_case" in metafunc.fixturenames:
        cases = [(m, c, mp) for m, sizes in mode.routes.items() for c, mp in sizes.cases()]
        metafunc.parametrize("route_case", cases, ids=[f"{m}-{c}-{mp:g}MP" for m, c, mp in cases])
    if "chunk_case" in metafunc.fixturenames:
        cases = [(r, n) for r in ROUTES_ONLY for n in mode.chunks]
        metafunc.parametrize("chunk_case", cases, ids=[f"spai-b16-{r}-chunk{n}" for r, n in cases])
    if "parity_model" in metafunc.fixturenames:
        metafunc.parametrize("parity_model", list(mode.routes), ids=list(mode.routes))
    if "bf16_case" in metafunc.fixturenames:
        cases = [(m, k) for m in mode.routes for k in BF16_KEEP]
        metafunc.parametrize("bf16_case", cases, ids=[f"{m}-{k}" for m, k in cases])


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
            from export.quantize import patch_encoder_int8

            patch_encoder_int8(exported.patch_encoder)
            cache[name] = out
        return cache[name]

    return get


@pytest.fixture(scope="session")
def encoder_flops(spai_model: Callable) -> Callable[[str], dict[str, int]]:
    """``encoder_flops(name)``: FLOPs per patch (FlopCounterMode, batch 1) of ``encode_patches`` and of the
    model's original algorithm (three backbone passes, four for fusion configs; its torch.fft filtering is not
    counted by the counter)."""
    from benchmarks.baseline import original_baseline
    from benchmarks.common import count_flops

    cache: dict[str, dict[str, int]] = {}

    def get(name: str) -> dict[str, int]:
        if name not in cache:
            model = spai_model(name)
            x = torch.rand(1, 3, 224, 224)
            with original_baseline(model) as base:
                cache[name] = {"model": count_flops(model.encode_patches, x), "baseline": count_flops(base.encode, x)}
        return cache[name]

    return get


TRAINED_TINY = "spai-tiny-trained"  # the route benchmark's demo-like trained spai-tiny


@pytest.fixture(scope="session")
def trained_tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A demo-like trained spai-tiny (``spai demo``'s proxy data and epochs; about 2 minutes on 2 cores):
    ``{"checkpoint": best.pth, "test_dir": its proxy test split with samples.csv labels}``.
    ``SPAI_BENCH_TINY_CHECKPOINT`` (and ``SPAI_BENCH_TINY_TEST_DIR``) reuse one, e.g. ``demo_output/train/best.pth``."""
    from benchmarks.trained import train_demo_like

    given = os.environ.get("SPAI_BENCH_TINY_CHECKPOINT")
    if given:
        test_dir = os.environ.get("SPAI_BENCH_TINY_TEST_DIR")
        return {"checkpoint": Path(given), "test_dir": Path(test_dir) if test_dir else None}
    return train_demo_like(tmp_path_factory.mktemp("trained-tiny"))


@pytest.fixture(scope="session")
def route_model(spai_model: Callable, tmp_path_factory: pytest.TempPathFactory,
                request: pytest.FixtureRequest) -> Callable[[str], dict]:
    """``route_model(model_id)`` -> ``{"model": torch model, "name": config, "checkpoint": path or None,
    "onnx_dir": folder with patch_encoder[.int8].onnx + aggregator.onnx, "flops": {...}}``, cached."""
    from benchmarks.baseline import original_baseline
    from benchmarks.common import count_flops

    cache: dict[str, dict] = {}

    def get(model_id: str) -> dict:
        if model_id not in cache:
            import spai
            from export.onnx import onnx_from_torch
            from export.quantize import patch_encoder_int8

            checkpoint = request.getfixturevalue("trained_tiny")["checkpoint"] if model_id == TRAINED_TINY else None
            model = spai.create_model(checkpoint=checkpoint) if checkpoint else spai_model(model_id)
            out = tmp_path_factory.mktemp(f"routes-{model_id}")
            graphs = onnx_from_torch(model, out)
            patch_encoder_int8(graphs.patch_encoder)
            x = torch.rand(1, 3, 224, 224)
            with original_baseline(model, 1) as base:
                flops = {"route": count_flops(model.encode_patches, x), "original": count_flops(base.encode, x)}
            cache[model_id] = {"model": model, "name": model.cfg.MODEL.NAME, "checkpoint": checkpoint,
                               "onnx_dir": out, "flops": flops}
        return cache[model_id]

    return get


@pytest.fixture(scope="session")
def route_workers() -> Any:
    """``route_workers(spec)`` -> the running worker for that spec; starting one stops the previous one, so that
    one contender's process is alive at a time (memory of the machine, and each process measures only itself)."""
    from benchmarks.route_worker import RouteWorker

    active: dict[str, Any] = {}

    def get(spec: Any) -> Any:
        if active.get("spec") != spec:
            if "worker" in active:
                active.pop("worker").close()
            active["worker"], active["spec"] = RouteWorker(spec), spec
        return active["worker"]

    yield get
    if "worker" in active:
        active["worker"].close()


@pytest.fixture(scope="session")
def check_images_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's generated corpus (spai.data.samples: JPEG/PNG/WebP, 90x60 to 2048x1152) in a folder."""
    from spai.data.samples import write_sample_images

    out = tmp_path_factory.mktemp("check-images")
    write_sample_images(out)
    return out
