"""Serving against in-process scoring: end-to-end images/s and p50/p99 latency through the bundled tritonserver
(python-ort repository, its default tuning) at concurrency 1, 4, 16 and 32, side by side with in-process scoring
of the same images with the same route (:func:`spai.infer.routes.runners_for`, as `spai predict` runs it, one image at a
time, all cores), for each served encoder graph: fp32 and int8 (exported and gated on this CPU first, as `spai
export --precision int8` does). ``ratio`` = serving images/s / in-process images/s of the same precision (above 1:
the server is faster).

Models (random weights): ``spai-tiny`` on the shared samples where present, else the generated corpus of
:mod:`spai.data.samples`; ``spai-fusion-b16`` (``slow``: moderate mode) on a few small images, since a patch costs
about a second on 2 cores. A pass at concurrency c sends max(images, c) requests, cycling the images.

    pytest benchmarks/test_serving.py --benchmark-json=out.json     # numbers in extra_info
    python benchmarks/test_serving.py [--model spai-fusion-b16] [--precision fp32 --precision int8] [--json out.json]
    python benchmarks/test_serving.py --tuning in_flight=1 --tuning "in_flight=4 entry_instances=3"  # compare
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "data" / "samples"
CONCURRENCY = (1, 4, 16, 32)
FUSION_IMAGES = 6  # 448 x 448 JPEGs: 4 patches each
MODELS = ("spai-tiny", "spai-fusion-b16")


def sample_paths(model: str, work: Path) -> list[Path]:
    """The images a model is measured on (see the module docstring)."""
    from spai.data.samples import write_sample_images
    from spai.infer.images import list_images

    if model == "spai-fusion-b16":
        return small_jpegs(work, FUSION_IMAGES)
    return list_images(SAMPLES) if SAMPLES.is_dir() else write_sample_images(work)


def small_jpegs(work: Path, n: int, size: int = 448) -> list[Path]:
    from PIL import Image

    work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = work / f"small-{i}.jpg"
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def make_export(model: str, out: Path, int8: bool = False) -> Path:
    """The seeded model's fp32 graphs; with ``int8`` also its int8 encoder, gated on this CPU as `spai export
    --precision int8` gates it (the verdicts go to the folder's route evidence, which serving int8 requires)."""
    import torch

    import spai
    from export.onnx import onnx_from_torch
    from export.quantize import patch_encoder_int8
    from spai.infer.routes import choose_route
    from spai.model.specs import ENCODER_FILES

    torch.manual_seed(0)
    scoring_model = spai.create_model(model)
    folder = onnx_from_torch(scoring_model, out).directory
    if int8:
        patch_encoder_int8(folder / ENCODER_FILES["fp32"])
        choose_route(scoring_model, onnx_dir=folder, backend="ort")
    return folder


def measure_inprocess(export: Path, paths: list[Path], precision: str = "fp32") -> dict[str, float]:
    """Images/s of the same inference path with the route's two ONNX graphs in this process, as `spai predict`
    runs them (:func:`spai.infer.routes.runners_for`), one image at a time."""
    from spai.infer.routes import runners_for
    from spai.infer.scorer import Scorer

    lat = []
    blobs = [p.read_bytes() for p in paths]
    with runners_for("ort", precision, onnx_dir=export) as route:
        scorer = Scorer.for_route(route)
        scorer.score_requests([blobs[:1]])  # warm-up
        start = time.perf_counter()
        for b in blobs:
            t = time.perf_counter()
            scorer.score_requests([[b]])
            lat.append((time.perf_counter() - t) * 1e3)
    return summarize(lat, time.perf_counter() - start)


def measure_server(url: str, paths: list[Path], concurrency: int) -> dict[str, float]:
    """Images/s and latency of max(len(paths), concurrency) requests sent ``concurrency`` at a time."""
    from serving.client import SpaiClient

    with SpaiClient(url) as client:
        client.infer(paths[0].read_bytes())  # warm-up
        requests = [paths[i % len(paths)] for i in range(max(len(paths), concurrency))]
        start = time.perf_counter()
        rows = client.score_paths(requests, concurrency=concurrency, progress=False)
    assert not any(r.error for r in rows), [r.error for r in rows if r.error][:3]
    return summarize([r.latency_ms for r in rows], time.perf_counter() - start)


def summarize(latencies_ms: list[float], seconds: float) -> dict[str, float]:
    lat = np.array(latencies_ms)
    return {"images_per_s": len(lat) / seconds, "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99))}


PRECISIONS = ("fp32", "int8")  # the python-ort encoder graphs (`spai repository --precision`)
_EXPORTS: dict[str, tuple[Path, list[Path]]] = {}  # model -> (its export with both encoder graphs, its images)


def _exported(model: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """The model's export (both encoder graphs gated on this CPU) and its images, made once per session."""
    if model not in _EXPORTS:
        paths = sample_paths(model, tmp_path_factory.mktemp("images"))
        _EXPORTS[model] = make_export(model, tmp_path_factory.mktemp("export"), int8=True), paths
    return _EXPORTS[model]


@pytest.fixture(scope="module", params=[
    pytest.param((model, precision), id=f"{precision}-{model}",
                 marks=[pytest.mark.slow] if model == "spai-fusion-b16" else [])
    for model in MODELS for precision in PRECISIONS])
def setup(request, tmp_path_factory):
    """(model, precision, its server, images, in-process numbers): one model at a time, fp32 then int8."""
    pytest.importorskip("pytriton")
    from serving.repository import build_repository
    from serving.server import TritonServer
    from spai.errors import ServingError

    model, precision = request.param
    export, paths = _exported(model, tmp_path_factory)
    try:
        repo = build_repository(export, "python-ort", tmp_path_factory.mktemp("repo") / "models",
                                precision=precision)
    except ServingError as e:  # int8 that failed its gate on this CPU is not served (nor measured)
        pytest.skip(f"{model} ort-{precision} is not served on this CPU: {e}")
    inprocess = measure_inprocess(export, paths, precision)  # before the server's processes exist
    with TritonServer(repo) as server:
        yield model, precision, server, paths, inprocess


def test_inprocess_ort(benchmark, setup):
    model, precision, _, _, inprocess = setup
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    benchmark.extra_info.update(kind="serving", model=model, mode="in-process", precision=precision, **inprocess)


@pytest.mark.parametrize("concurrency", CONCURRENCY)
def test_triton_end_to_end(benchmark, setup, concurrency):
    model, precision, server, paths, inprocess = setup
    result = benchmark.pedantic(measure_server, args=(server.http_url, paths, concurrency), rounds=1, iterations=1)
    benchmark.extra_info.update(kind="serving", model=model, mode="triton", precision=precision,
                                concurrency=concurrency, ratio=result["images_per_s"] / inprocess["images_per_s"],
                                **result)


def run_table(model: str, work: Path, tunings: list[str] | None = None,
              precisions: tuple[str, ...] = ("fp32",)) -> list[dict]:
    """In-process per precision, then a server per precision and tuning ("" = the variant's defaults; else
    space-separated serving.repository.Tuning fields KEY=VALUE) at every concurrency: one row each, printed as it is
    measured. ``ratio``: served / in-process of the same precision; ``vs_served_fp32``: served / served fp32 (same
    tuning and concurrency)."""
    paths = sample_paths(model, work / "images")
    export = make_export(model, work / "export", int8="int8" in precisions)
    print(f"{model}: {len(paths)} images")
    base = {}
    for precision in precisions:  # all before any server's processes exist
        base[precision] = measure_inprocess(export, paths, precision)
        _print_row(f"in-process ort-{precision}", base[precision])
    rows = [{"model": model, "mode": "in-process", "precision": pr, "images": len(paths), **r}
            for pr, r in base.items()]
    for i, tuning in enumerate(tunings or [""]):
        for precision in precisions:
            rows += _served_rows(model, export, paths, work / f"repo{i}-{precision}", tuning, precision, base)
    served_fp32 = {(r["tuning"], r["concurrency"]): r["images_per_s"] for r in rows
                   if r["mode"] == "triton" and r["precision"] == "fp32"}
    for r in rows:
        if r["mode"] == "triton" and (r["tuning"], r["concurrency"]) in served_fp32:
            r["vs_served_fp32"] = r["images_per_s"] / served_fp32[(r["tuning"], r["concurrency"])]
    return rows


def _served_rows(model: str, export: Path, paths: list[Path], repo_dir: Path, tuning: str, precision: str,
                 base: dict[str, dict[str, float]]) -> list[dict]:
    from serving.repository import build_repository
    from serving.server import TritonServer

    extra = {"tuning": _tuning(tuning)} if tuning else {}
    repo = build_repository(export, "python-ort", repo_dir, precision=precision, **extra)
    print(f"  served ort-{precision}, tuning: {tuning or 'defaults'}", flush=True)
    rows = []
    with TritonServer(repo) as server:
        for c in CONCURRENCY:
            r = measure_server(server.http_url, paths, c)
            rows.append({"model": model, "mode": "triton", "precision": precision, "tuning": tuning,
                         "concurrency": c, "ratio": r["images_per_s"] / base[precision]["images_per_s"], **r})
            _print_row(f"triton c={c:<2}", r, f"  served/in-process {rows[-1]['ratio']:.2f}x")
    return rows


def _print_row(label: str, r: dict[str, float], tail: str = "") -> None:
    print(f"  {label:<20} {r['images_per_s']:6.2f} img/s  p50 {r['p50_ms']:7.1f} ms  p99 {r['p99_ms']:7.1f} ms"
          f"{tail}", flush=True)


def _tuning(text: str):
    """'in_flight=4 encoder_preferred_batch=64,128' -> the python-ort Tuning with those fields."""
    from serving.repository import tuning_with

    fields = {}
    for pair in text.split():
        key, _, value = pair.partition("=")
        fields[key] = tuple(int(v) for v in value.split(",") if v) if "preferred" in key else int(value)
    return tuning_with("python-ort", **fields)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", choices=MODELS, help="default: spai-tiny")
    ap.add_argument("--json", help="also write the rows here")
    ap.add_argument("--precision", action="append", choices=PRECISIONS,
                    help="the served encoder graph (repeatable; default fp32): int8 is exported and gated first")
    ap.add_argument("--tuning", action="append", help="KEY=VALUE ... of serving.repository.Tuning (repeatable: "
                    "one server each, after the defaults when '' is given)")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.model or ["spai-tiny"]:
            rows += run_table(model, Path(tmp) / model, args.tuning, tuple(args.precision or ["fp32"]))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    import importlib.util
    import sys

    if importlib.util.find_spec("serving") is None:  # run as a script: the project this file is in, unless the
        sys.path.append(str(Path(__file__).resolve().parents[1]))  # caller's PYTHONPATH names another checkout
    main()
