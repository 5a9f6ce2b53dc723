"""The corpus engines side by side: ``spai predict`` (this process) against ``spai predict --engine ray`` (an
embedded Ray on this machine, the default without ``--address``) on the same corpus, checkpoint and route, in one
session. Each round is one whole command (model load, listing, scoring, the Parquet output); Ray's own start
(``ray.init``, once per command without a running Ray) is measured apart, as ``ray_init_s``, so that the engine
ratio reads the pipeline, not the start. Moderate and full mode score two corpus sizes per engine, and
``test_engine_rates`` reads each engine's steady throughput (the slope: extra images / extra seconds between the
two sizes' medians) and its start-up (the intercept: what a run costs besides its images) from them; the throughput
ratio is ray's slope over local's.

    pytest benchmarks/test_corpus_engines.py --bench-mode moderate --benchmark-json=out.json
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from benchmarks.common import BenchMode

IMAGES = {"quick": (32,), "moderate": (100, 400), "full": (400, 2000)}  # 240 x 200 PNGs (spai-tiny)
ENGINES = ("local", "ray")
_MEDIANS: dict[tuple[str, int], float] = {}  # (engine, images) -> median seconds of one whole command


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, bench_mode: BenchMode) -> tuple[dict[int, Path], Path]:
    """({images: folder of that many seeded 240 x 200 PNGs}, checkpoint of a seeded spai-tiny); the smaller
    folders hold hard links to the first images of the largest."""
    import torch
    from PIL import Image

    import spai

    out = tmp_path_factory.mktemp("engines")
    sizes = IMAGES[bench_mode.name]
    folders = {n: out / f"images-{n}" for n in sizes}
    for folder in folders.values():
        folder.mkdir()
    for i in range(max(sizes)):
        name = f"img{i:05d}.png"
        first = folders[max(sizes)] / name
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (200, 240, 3), dtype=np.uint8)).save(first)
        for n in sizes:
            if n != max(sizes) and i < n:
                (folders[n] / name).hardlink_to(first)
    torch.manual_seed(0)
    return folders, spai.save_checkpoint(spai.create_model("spai-tiny"), out / "tiny.pth")


@pytest.fixture(scope="module")
def ray_init_s() -> Iterator[float]:
    """One embedded Ray for the module (each ``--engine ray`` round reuses it); the seconds its start took."""
    ray = pytest.importorskip("ray", reason="the `ray` extra is not installed")
    start = time.perf_counter()
    ray.init(include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    took = time.perf_counter() - start
    yield took
    ray.shutdown()


@pytest.mark.parametrize("size", [0, 1], ids=["smaller", "larger"])
@pytest.mark.parametrize("engine", ENGINES)
def test_corpus_engine(benchmark, engine: str, size: int, corpus: tuple[dict[int, Path], Path],
                       bench_mode: BenchMode, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """One ``spai predict`` of the corpus per round, by ``engine``; every image scored."""
    from spai.corpus.writers import read_score_rows
    from spai_cli import main

    folders, ckpt = corpus
    if size >= len(folders):
        pytest.skip(f"{bench_mode.name} mode scores one corpus size (rates need two: --bench-mode moderate)")
    n = sorted(folders)[size]
    init_s = request.getfixturevalue("ray_init_s") if engine == "ray" else None
    out = tmp_path / "scores.parquet"
    argv = ["predict", str(folders[n]), "--checkpoint", str(ckpt), "-o", str(out), "--no-progress",
            *(["--engine", "ray"] if engine == "ray" else [])]

    def fresh_output() -> tuple[tuple, dict]:
        shutil.rmtree(out, ignore_errors=True)  # a folder of parts
        return (), {}

    benchmark.group = "corpus-engines"
    rounds = 1 if bench_mode.name == "quick" else 3
    code = benchmark.pedantic(lambda: main(argv), setup=fresh_output, rounds=rounds, iterations=1)
    rows = read_score_rows(out)
    assert code == 0 and len(rows) == n and not any(r["error"] for r in rows)
    _MEDIANS[(engine, n)] = benchmark.stats.stats.median
    benchmark.extra_info.update(kind="corpus_engine", engine=engine, images=len(rows), ray_init_s=init_s,
                                route="torch-fp32", model="spai-tiny")


def test_engine_rates(benchmark, bench_mode: BenchMode) -> None:
    """Each engine's steady images/s and start-up seconds from its two sizes (run above, in this session), and
    the throughput ratio ray / local."""
    small, large = (IMAGES[bench_mode.name] + (None,))[:2]
    if large is None or any((e, n) not in _MEDIANS for e in ENGINES for n in (small, large)):
        pytest.skip("needs both engines at two corpus sizes in this session (--bench-mode moderate)")
    for e in ENGINES:
        assert _MEDIANS[(e, large)] > _MEDIANS[(e, small)], f"{e}: {large} images took no longer than {small}"
    rates = {e: (large - small) / (_MEDIANS[(e, large)] - _MEDIANS[(e, small)]) for e in ENGINES}
    starts = {e: _MEDIANS[(e, small)] - small / rates[e] for e in ENGINES}
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    benchmark.extra_info.update(kind="corpus_engine_rates", images=[small, large],
                                **{f"{e}_images_per_s": rates[e] for e in ENGINES},
                                **{f"{e}_start_s": starts[e] for e in ENGINES},
                                throughput_ratio=rates["ray"] / rates["local"])
