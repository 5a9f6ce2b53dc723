"""The corpus engines side by side: ``spai predict`` (this process) against ``spai predict --engine ray`` (an
embedded Ray on this machine, the default without ``--address``) on the same corpus, checkpoint and route, in one
session. Each round is one whole command (model load, listing, scoring, the Parquet output); Ray's own start
(``ray.init``, once per command without a running Ray) is measured apart, as ``ray_init_s``, so that the engine
ratio (ray images/s / local images/s, from the two medians) reads the pipeline, not the start.

    pytest benchmarks/test_corpus_engines.py --bench-mode moderate --benchmark-json=out.json
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from benchmarks.common import BenchMode

IMAGES = {"quick": 32, "moderate": 400, "full": 2000}  # 240 x 200 PNGs, one patch each (spai-tiny)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, bench_mode: BenchMode) -> tuple[Path, Path]:
    """(folder of seeded 240 x 200 PNGs, checkpoint of a seeded spai-tiny)."""
    import torch
    from PIL import Image

    import spai

    out = tmp_path_factory.mktemp("engines")
    images = out / "images"
    images.mkdir()
    for i in range(IMAGES[bench_mode.name]):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (200, 240, 3), dtype=np.uint8)).save(
            images / f"img{i:05d}.png")
    torch.manual_seed(0)
    return images, spai.save_checkpoint(spai.create_model("spai-tiny"), out / "tiny.pth")


@pytest.fixture(scope="module")
def ray_init_s() -> Iterator[float]:
    """One embedded Ray for the module (each ``--engine ray`` round reuses it); the seconds its start took."""
    ray = pytest.importorskip("ray", reason="the `ray` extra is not installed")
    start = time.perf_counter()
    ray.init(include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    took = time.perf_counter() - start
    yield took
    ray.shutdown()


@pytest.mark.parametrize("engine", ["local", "ray"])
def test_corpus_engine(benchmark, engine: str, corpus: tuple[Path, Path], bench_mode: BenchMode,
                       request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """One ``spai predict`` of the corpus per round, by ``engine``; every image scored."""
    from spai.scores import read_score_rows
    from spai_cli import main

    images, ckpt = corpus
    init_s = request.getfixturevalue("ray_init_s") if engine == "ray" else None
    out = tmp_path / "scores.parquet"
    argv = ["predict", str(images), "--checkpoint", str(ckpt), "-o", str(out), "--no-progress",
            *(["--engine", "ray"] if engine == "ray" else [])]

    def fresh_output() -> tuple[tuple, dict]:
        from spai.scores import parts_dir

        out.unlink(missing_ok=True)
        for part in parts_dir(out).glob("*") if parts_dir(out).is_dir() else []:
            part.unlink()
        return (), {}

    benchmark.group = "corpus-engines"
    rounds = 1 if bench_mode.name == "quick" else 3
    code = benchmark.pedantic(lambda: main(argv), setup=fresh_output, rounds=rounds, iterations=1)
    rows = read_score_rows(out)
    assert code == 0 and len(rows) == IMAGES[bench_mode.name] and not any(r["error"] for r in rows)
    benchmark.extra_info.update(kind="corpus_engine", engine=engine, images=len(rows), ray_init_s=init_s,
                                route="torch-fp32", model="spai-tiny")
