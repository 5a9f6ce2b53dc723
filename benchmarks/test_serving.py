"""Serving against in-process scoring: end-to-end images/s and p50/p99 latency through the bundled tritonserver
(python-ort repository, its default tuning) at concurrency 1, 4, 16 and 32, side by side with in-process scoring
of the same images with the same runner (:mod:`spai.inference` with ONNX Runtime, one image at a time, all cores).
``ratio`` = serving images/s / in-process images/s (above 1: the server is faster).

Models (random weights): ``spai-tiny`` on the shared samples where present, else the generated corpus of
:mod:`spai.data.samples`; ``spai-fusion-b16`` (``slow``: moderate mode) on a few small images, since a patch costs
about a second on 2 cores. A pass at concurrency c sends max(images, c) requests, cycling the images.

    pytest benchmarks/test_serving.py --benchmark-json=out.json     # numbers in extra_info
    python benchmarks/test_serving.py [--model spai-fusion-b16] [--json out.json]   # a table
    python benchmarks/test_serving.py --tuning in_flight=1 --tuning "in_flight=4 entry_instances=3"  # compare

The script only uses what the code before issue 13 had too, so ``PYTHONPATH=OLD_CHECKOUT python
benchmarks/test_serving.py`` measures an older checkout's server and inference path the same way.
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
    from spai.images import list_images

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


def make_export(model: str, out: Path) -> Path:
    import torch

    import spai
    from export.onnx import onnx_from_torch

    torch.manual_seed(0)
    return onnx_from_torch(spai.create_model(model), out).directory


def measure_inprocess(export: Path, paths: list[Path]) -> dict[str, float]:
    """Images/s of the same inference path with both ONNX graphs in this process (one image at a time)."""
    from spai.inference import Scorer
    from spai.runners import OrtRunner
    from spai.specs import AGGREGATOR_FILE, ENCODER_FILES

    lat = []
    blobs = [p.read_bytes() for p in paths]
    with OrtRunner(export / ENCODER_FILES["fp32"]) as enc, OrtRunner(export / AGGREGATOR_FILE) as agg:
        scorer = Scorer(enc, agg)
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

    client = SpaiClient(url)
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


def _setup(model: str, tmp_path_factory):
    pytest.importorskip("pytriton")
    from serving.repository import build_repository
    from serving.server import TritonServer

    paths = sample_paths(model, tmp_path_factory.mktemp("images"))
    export = make_export(model, tmp_path_factory.mktemp("export"))
    repo = build_repository(export, "python-ort", tmp_path_factory.mktemp("repo") / "models")
    return export, TritonServer(repo), paths


@pytest.fixture(scope="module", params=[pytest.param("spai-tiny"),
                                        pytest.param("spai-fusion-b16", marks=pytest.mark.slow)])
def setup(request, tmp_path_factory):
    export, server, paths = _setup(request.param, tmp_path_factory)
    inprocess = measure_inprocess(export, paths)  # before the server's processes exist
    with server:
        yield request.param, export, server, paths, inprocess


def test_inprocess_ort(benchmark, setup):
    model, _, _, _, inprocess = setup
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    benchmark.extra_info.update(kind="serving", model=model, mode="in-process", **inprocess)


@pytest.mark.parametrize("concurrency", CONCURRENCY)
def test_triton_end_to_end(benchmark, setup, concurrency):
    model, _, server, paths, inprocess = setup
    result = benchmark.pedantic(measure_server, args=(server.http_url, paths, concurrency), rounds=1, iterations=1)
    benchmark.extra_info.update(kind="serving", model=model, mode="triton", concurrency=concurrency,
                                ratio=result["images_per_s"] / inprocess["images_per_s"], **result)


def run_table(model: str, work: Path, tunings: list[str] | None = None) -> list[dict]:
    """In-process, then the server at every concurrency, once per tuning ("" = the variant's defaults; else
    space-separated serving.repository.Tuning fields KEY=VALUE): one row each, printed as it is measured."""
    from serving.repository import build_repository
    from serving.server import TritonServer

    paths = sample_paths(model, work / "images")
    export = make_export(model, work / "export")
    base = measure_inprocess(export, paths)
    rows = [{"model": model, "mode": "in-process", "images": len(paths), **base}]
    print(f"{model}: {len(paths)} images")
    print(f"  in-process ORT      {base['images_per_s']:6.2f} img/s  p50 {base['p50_ms']:7.1f} ms  "
          f"p99 {base['p99_ms']:7.1f} ms", flush=True)
    for i, tuning in enumerate(tunings or [""]):
        extra = {"tuning": _tuning(tuning)} if tuning else {}
        repo = build_repository(export, "python-ort", work / f"repo{i}", **extra)
        print(f"  tuning: {tuning or 'defaults'}", flush=True)
        with TritonServer(repo) as server:
            for c in CONCURRENCY:
                r = measure_server(server.http_url, paths, c)
                rows.append({"model": model, "mode": "triton", "tuning": tuning, "concurrency": c,
                             "ratio": r["images_per_s"] / base["images_per_s"], **r})
                print(f"  triton c={c:<2}         {r['images_per_s']:6.2f} img/s  p50 {r['p50_ms']:7.1f} ms  "
                      f"p99 {r['p99_ms']:7.1f} ms  serving/in-process {rows[-1]['ratio']:.2f}x", flush=True)
    return rows


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
    ap.add_argument("--tuning", action="append", help="KEY=VALUE ... of serving.repository.Tuning (repeatable: "
                    "one server each, after the defaults when '' is given)")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.model or ["spai-tiny"]:
            rows += run_table(model, Path(tmp) / model, args.tuning)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    import importlib.util
    import sys

    if importlib.util.find_spec("serving") is None:  # run as a script: the project this file is in, unless the
        sys.path.append(str(Path(__file__).resolve().parents[1]))  # caller's PYTHONPATH names another checkout
    main()
