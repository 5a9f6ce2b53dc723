"""``spai score`` on a corpus against the bundled tritonserver: SIGKILLed at random moments and resumed, every
input scored exactly once with the probabilities of an uninterrupted run."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from helpers import run_spai_killed_at
from PIL import Image

from spai.corpus.writers import read_score_rows
from spai_cli import main

N_IMAGES = 40
pytestmark = pytest.mark.triton


@pytest.fixture(scope="module")
def server(tiny_onnx_dir, tmp_path_factory):
    from serving.repository import build_repository
    from serving.server import TritonServer

    repo = build_repository(tiny_onnx_dir, "python-ort", tmp_path_factory.mktemp("repo") / "models")
    with TritonServer(repo) as srv:
        yield srv


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("score-corpus")
    for i in range(N_IMAGES):
        pixels = np.random.default_rng(i).integers(0, 255, (40 + i % 5, 48, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i:03d}.png")
    return folder


def _score(images: Path, url: str, out: Path, kill_after: int | None) -> int | None:
    """``spai score --resume`` in a subprocess, SIGKILLed once ``kill_after`` rows / parts are on disk."""
    return run_spai_killed_at(["score", str(images), "--url", url, "-o", str(out), "--resume", "--no-progress",
                               "--row-group", "2", "--concurrency", "2"], out, kill_after, poll_s=0.01)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_score_sigkill_at_three_moments_then_resume(server, images, tmp_path, suffix):
    ref = tmp_path / "ref.parquet"
    assert main(["score", str(images), "--url", server.http_url, "-o", str(ref), "--no-progress"]) == 0
    reference = {r["image"]: r["probability"] for r in read_score_rows(ref)}
    out = tmp_path / f"scores{suffix}"
    seed = random.randrange(1 << 30)
    unit = 1 if suffix == ".csv" else 2
    kills = sorted(random.Random(seed).sample(range(1, N_IMAGES // unit), 3))
    killed = [_score(images, server.http_url, out, k) is None for k in kills]
    assert _score(images, server.http_url, out, None) == 0
    rows = read_score_rows(out)
    keys = [r["image"] for r in rows]
    assert sorted(keys) == sorted(reference) and not any(r["error"] for r in rows), f"seed {seed} kills {kills}"
    if suffix == ".csv":
        assert out.read_bytes().count(b"\n") == N_IMAGES + 1, f"seed {seed} kills {kills}"
    tolerance = 1e-6 if suffix == ".parquet" else 1.5e-6  # CSV rounds to 6 decimals
    assert max(abs(r["probability"] - reference[r["image"]]) for r in rows) <= tolerance, f"seed {seed}"
    assert any(killed), f"no run was killed mid-way (seed {seed})"
