"""CPU routes against the original algorithms, side by side in one run: images/s, peak memory, parity.

Contenders (each in its own fresh process, :mod:`benchmarks.route_worker`; the same threads for all):
``original-1`` / ``original-cfg`` (the model's original algorithm, :mod:`benchmarks.baseline`, one patch per
call / its FEATURE_EXTRACTION_BATCH of 400) and our routes ``torch-fp32``, ``torch-bf16``, ``ort-fp32``,
``ort-int8`` (:func:`spai.infer.runners.runners_for` through :mod:`spai.infer.scorer`). Each scores the same seeded images
of 0.25, 1, 3 and 12 MP (sizes per model and mode: :data:`benchmarks.common.MODES`); the parent samples a matmul
probe around each case (a loaded machine shows as a drop; the report then refuses the run's ratios). Also here:
patches/s per chunk size of each route (the declared chunks are chosen from it), the comparator's parity of
the reduced-precision routes (random patches, the generated corpus, the trained spai-tiny's labelled test split)
and what keeping the bf16 route's fp32 layers costs (every GEMM in bf16 against the route, side by side).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from benchmarks.baseline import FORK, UPSTREAM
from benchmarks.common import ROUTE_IMAGES, BenchMode, device_label, matmul_probe
from benchmarks.conftest import TRAINED_TINY
from benchmarks.route_worker import ContenderSpec
from spai.model.specs import ENCODER_FILES

PATCH = 224


def _skip_unsupported(contender: str) -> None:
    from spai.errors import ConfigError
    from spai.infer.routes import resolve_route

    if contender.startswith("original"):
        return
    try:
        resolve_route(*contender.split("-"))
    except ConfigError as e:
        pytest.skip(f"{contender} does not run well on this CPU: {e}")


def _spec(info: dict, contender: str, chunk: int | None = None) -> ContenderSpec:
    return ContenderSpec(contender, info["name"], str(info["checkpoint"]) if info["checkpoint"] else None,
                         str(info["onnx_dir"]), chunk)


def _baseline_name(info: dict) -> str:
    return FORK if info["model"].mfvit.features_processor.uses_semantics else UPSTREAM


def _measure(benchmark: Any, worker: Any, rounds: int) -> dict[str, Any]:
    """Time ``rounds`` scorings of the worker's image, with the matmul probe before and after."""
    before = matmul_probe()
    results: list[dict[str, Any]] = []
    benchmark.pedantic(lambda: results.append(worker.score()), rounds=rounds, warmup_rounds=0, iterations=1)
    after = matmul_probe()
    return {"probe_gflops": round(min(before, after), 1), "probe_gflops_max": round(max(before, after), 1),
            "logit": results[-1]["logit"], "peak_mb": round(max(r["peak_mb"] for r in results), 1),
            "process_peak_mb": round(results[-1]["process_peak_mb"], 1),
            "load_peak_mb": round(worker.ready["peak_mb"], 1), "load_rss_mb": round(worker.ready["rss_mb"], 1),
            "threads": worker.ready["threads"], "torch_loaded": worker.ready["torch_loaded"]}


def _device() -> str:
    import torch

    return device_label(torch.device("cpu"))


def _first_guess_route() -> str:
    """The route the CPU's flags put first (``auto`` then decides by this checkpoint's gates and speeds)."""
    from spai.infer.cpu import cpu_routes

    return "-".join(cpu_routes()[0])


def _rounds(model_id: str, patches: int) -> int:
    """Three rounds for cheap cases, one for the expensive ones (a full-size 12 MP image takes minutes)."""
    if model_id.startswith("spai-tiny"):
        return 3 if patches <= 64 else 1
    return 2 if patches <= 4 else 1


def _megapixels(path: Any) -> float:
    from PIL import Image

    with Image.open(path) as im:
        return im.width * im.height / 1e6


def test_cpu_route(benchmark, route_case: tuple[str, str, float], route_model: Callable,
                   route_workers: Callable) -> None:
    model_id, contender, mp = route_case
    _skip_unsupported(contender)
    benchmark.group = f"route-{model_id}-{mp:g}MP"
    info = route_model(model_id)
    height, width = ROUTE_IMAGES[mp]
    patches = (height // PATCH) * (width // PATCH)
    worker = route_workers(_spec(info, contender))
    worker.image(height, width, seed=int(mp * 100))
    measured = _measure(benchmark, worker, _rounds(model_id, patches))
    backend, _, precision = contender.partition("-")
    original = backend == "original"
    benchmark.extra_info.update(
        kind="route", model=model_id, contender=contender, backend=backend, precision="fp32" if original else precision,
        chunk=(info["model"].cfg.MODEL.FEATURE_EXTRACTION_BATCH if precision == "cfg" else 1) if original else None,
        baseline=_baseline_name(info) if original else None, nominal_mp=mp, height=height, width=width,
        megapixels=height * width / 1e6, patches=patches, device=_device(), first_guess_route=_first_guess_route(),
        flops_per_patch=info["flops"]["original" if original else "route"], **measured)


def test_route_chunk(benchmark, chunk_case: tuple[str, int], route_model: Callable, route_workers: Callable) -> None:
    """Patches/s and peak memory of each route per chunk size on one 8-patch spai-b16 image (896 x 448)."""
    route, chunk = chunk_case
    _skip_unsupported(route)
    benchmark.group = f"chunk-spai-b16-{route}"
    info = route_model("spai-b16")
    worker = route_workers(_spec(info, route, chunk))
    worker.image(896, 448, seed=11)
    measured = _measure(benchmark, worker, 1)
    backend, _, precision = route.partition("-")
    benchmark.extra_info.update(kind="chunk", model="spai-b16", contender=route, backend=backend,
                                precision=precision, chunk=chunk, patches=8, device=_device(),
                                flops_per_patch=info["flops"]["route"], **measured)


def test_route_parity(benchmark, parity_model: str, bench_mode: BenchMode, route_model: Callable,
                      check_images_dir: Any, request: pytest.FixtureRequest) -> None:
    """The comparator (spai.infer.parity) on torch-bf16 and ort-int8 against torch fp32: random patches, the generated
    corpus at native sizes (up to ``parity_max_mp``) and, for the trained spai-tiny, its labelled proxy test
    split (AUC delta against the labels)."""
    from dataclasses import asdict

    from export.compare import load_images
    from export.quantize import precision_table_onnx
    from spai.infer.parity import compare_routes
    from spai.infer.routes import runners_for
    from spai.model.nn.precision import precision_table

    benchmark.group = f"parity-{parity_model}"
    info = route_model(parity_model)
    paths, labels = load_images(check_images_dir)
    paths = [p for p in paths if _megapixels(p) <= bench_mode.parity_max_mp]
    if parity_model == TRAINED_TINY and request.getfixturevalue("trained_tiny")["test_dir"]:
        paths, labels = load_images(request.getfixturevalue("trained_tiny")["test_dir"])
    entered = [runners_for(b, p, model=info["model"], onnx_dir=info["onnx_dir"]).__enter__()
               for b, p in (("torch", "bf16"), ("ort", "int8"))]
    report: list[Any] = []
    benchmark.pedantic(lambda: report.append(compare_routes(info["model"], entered, image_paths=paths,
                                                              labels=labels, n_random=bench_mode.parity_patches)),
                       rounds=1, warmup_rounds=0, iterations=1)
    import torch

    tables = {"ort-int8": precision_table_onnx(info["onnx_dir"] / ENCODER_FILES["int8"]),
              "torch-bf16": precision_table(info["model"], torch.rand(1, 3, 224, 224))}
    benchmark.extra_info.update(kind="parity", model=parity_model, images=len(paths),
                                labelled=labels is not None, random_patches=bench_mode.parity_patches,
                                report=asdict(report[0]), passed=report[0].passed, precision_layers=tables)


def test_bf16_kept_layers(benchmark, bf16_case: tuple[str, str], bench_mode: BenchMode, spai_model: Callable,
                          request: pytest.FixtureRequest) -> None:
    """The torch bf16 encoder with every GEMM in bf16 against the route, which keeps the patch embedding in fp32:
    the two cases of a model share a group, so that their ratio is taken within one run."""
    import numpy as np
    import torch

    import spai
    from spai.infer.runners import TorchRunner
    from spai.model.nn.precision import bf16_fp32_layers, flop_share

    model_id, case = bf16_case
    _skip_unsupported("torch-bf16")
    benchmark.group = f"bf16-keep-{model_id}"
    model = spai.create_model(checkpoint=request.getfixturevalue("trained_tiny")["checkpoint"]) \
        if model_id == TRAINED_TINY else spai_model(model_id)
    keep = frozenset() if case == "bf16-all" else bf16_fp32_layers(model)
    patches = 8 if model_id.startswith("spai-tiny") else 2
    feed = {"patches": np.random.default_rng(0).random((patches, 3, PATCH, PATCH), dtype=np.float32)}
    before = matmul_probe()
    with TorchRunner(model, "patch_encoder", patches, "bf16", keep_fp32=keep) as runner:
        benchmark.pedantic(lambda: runner.infer(feed), rounds=bench_mode.rounds, warmup_rounds=1, iterations=1)
    after = matmul_probe()
    share = flop_share(model, torch.rand(1, 3, PATCH, PATCH), keep)
    benchmark.extra_info.update(kind="bf16_keep", model=model_id, case=case, fp32_gemms=sorted(keep),
                                bf16_share=share, patches=patches, threads=torch.get_num_threads(), device=_device(),
                                probe_gflops=round(min(before, after), 1),
                                probe_gflops_max=round(max(before, after), 1))
