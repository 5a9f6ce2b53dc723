"""Serving overhead: end-to-end images/s and p50/p99 latency through the bundled tritonserver (python-ort
repository of spai-tiny) at concurrency 1, 4, 16, against in-process scoring of the same images with the same
runner (:mod:`spai.inference` with ONNX Runtime). Images: the shared samples where present, else the generated
corpus of :mod:`spai.data.samples`.

    pytest benchmarks/test_serving.py --benchmark-json=out.json     # numbers in extra_info
    python benchmarks/test_serving.py                               # prints a table
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "data" / "samples"
CONCURRENCY = (1, 4, 16)


def sample_paths(work: Path) -> list[Path]:
    from spai.data.samples import write_sample_images
    from spai.images import list_images

    return list_images(SAMPLES) if SAMPLES.is_dir() else write_sample_images(work)


def make_export(out: Path) -> Path:
    import torch

    import spai
    from export.onnx import onnx_from_torch

    torch.manual_seed(0)
    return onnx_from_torch(spai.create_model("spai-tiny"), out).directory


def measure_inprocess(export: Path, paths: list[Path]) -> dict[str, float]:
    """Images/s of the same inference path with both ONNX graphs in this process (one image at a time)."""
    from spai.inference import score_requests
    from spai.runners import OrtRunner

    lat = []
    blobs = [p.read_bytes() for p in paths]
    with OrtRunner(export / "patch_encoder.onnx") as enc, OrtRunner(export / "aggregator.onnx") as agg:
        score_requests([blobs[:1]], enc, agg)  # warm-up
        start = time.perf_counter()
        for b in blobs:
            t = time.perf_counter()
            score_requests([[b]], enc, agg)
            lat.append((time.perf_counter() - t) * 1e3)
    return summarize(lat, time.perf_counter() - start)


def measure_server(url: str, paths: list[Path], concurrency: int) -> dict[str, float]:
    from serving.client import SpaiClient

    client = SpaiClient(url)
    client.infer(paths[0].read_bytes())  # warm-up
    start = time.perf_counter()
    rows = client.score_paths(paths, concurrency=concurrency, progress=False)
    assert not any(r.error for r in rows)
    return summarize([r.latency_ms for r in rows], time.perf_counter() - start)


def summarize(latencies_ms: list[float], seconds: float) -> dict[str, float]:
    lat = np.array(latencies_ms)
    return {"images_per_s": len(lat) / seconds, "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99))}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    pytest.importorskip("pytriton")
    paths = sample_paths(tmp_path_factory.mktemp("images"))
    from serving.repository import build_repository
    from serving.server import TritonServer

    export = make_export(tmp_path_factory.mktemp("export"))
    repo = build_repository(export, "python-ort", tmp_path_factory.mktemp("repo") / "models")
    with TritonServer(repo) as server:
        yield export, server, paths


def test_inprocess_ort(benchmark, setup):
    export, _, paths = setup
    result = benchmark.pedantic(measure_inprocess, args=(export, paths), rounds=1, iterations=1)
    benchmark.extra_info.update(result)


@pytest.mark.parametrize("concurrency", CONCURRENCY)
def test_triton_end_to_end(benchmark, setup, concurrency):
    _, server, paths = setup
    result = benchmark.pedantic(measure_server, args=(server.http_url, paths, concurrency), rounds=1, iterations=1)
    benchmark.extra_info.update(result)


def main() -> None:
    import tempfile

    from serving.repository import build_repository
    from serving.server import TritonServer

    with tempfile.TemporaryDirectory() as tmp:
        paths = sample_paths(Path(tmp) / "images")
        export = make_export(Path(tmp) / "export")
        base = measure_inprocess(export, paths)
        print(f"in-process ORT      {base['images_per_s']:6.2f} img/s  p50 {base['p50_ms']:7.1f} ms  "
              f"p99 {base['p99_ms']:7.1f} ms")
        with TritonServer(build_repository(export, "python-ort", Path(tmp) / "repo")) as server:
            for c in CONCURRENCY:
                r = measure_server(server.http_url, paths, c)
                print(f"triton c={c:<2}         {r['images_per_s']:6.2f} img/s  p50 {r['p50_ms']:7.1f} ms  "
                      f"p99 {r['p99_ms']:7.1f} ms  overhead x{base['images_per_s'] / r['images_per_s']:.2f}")


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
    main()
