"""``spai predict`` on a corpus: streamed, written row by row; SIGKILLed at random moments and resumed, every input
is scored exactly once with the probabilities of an uninterrupted run; stdin lists; an existing output refused."""

from __future__ import annotations

import io
import os
import random
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import run_spai_killed_at
from PIL import Image

from spai.corpus.writers import read_score_rows
from spai_cli import main

N_IMAGES = 24


@pytest.fixture(scope="module")
def corpus(tiny_model, tmp_path_factory) -> tuple[Path, Path]:
    """(folder of small generated images, checkpoint of the seeded spai-tiny model)."""
    import spai

    out = tmp_path_factory.mktemp("corpus")
    images = out / "images"
    images.mkdir()
    for i in range(N_IMAGES):
        pixels = np.random.default_rng(i).integers(0, 255, (40 + i % 5, 48, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / f"img{i:03d}.png")
    spai.save_checkpoint(tiny_model, out / "tiny.pth")
    return images, out / "tiny.pth"


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory) -> dict[str, float]:
    """image -> probability of one uninterrupted in-process run (Parquet: the probabilities unrounded)."""
    images, ckpt = corpus
    out = tmp_path_factory.mktemp("ref") / "ref.parquet"
    assert main(["predict", str(images), "--checkpoint", str(ckpt), "-o", str(out), "--no-progress"]) == 0
    return {r["image"]: r["probability"] for r in read_score_rows(out)}


def _predict(images: Path, ckpt: Path, out: Path, kill_after: int | None) -> int | None:
    """``spai predict --resume`` in a subprocess, SIGKILLed once ``kill_after`` rows / parts are on disk."""
    return run_spai_killed_at(["predict", str(images), "--checkpoint", str(ckpt), "-o", str(out), "--resume",
                               "--no-progress", "--row-group", "3", "--window", "4"], out, kill_after)


@pytest.mark.parametrize(("suffix", "moments"), [(".csv", 2), (".parquet", 1)])
def test_sigkill_at_random_moments_then_resume_scores_each_input_once(corpus, reference, tmp_path, suffix,
                                                                      moments):
    images, ckpt = corpus
    out = tmp_path / f"scores{suffix}"
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    unit = 1 if suffix == ".csv" else 3  # a Parquet part holds --row-group rows
    kills = sorted(rng.sample(range(1, N_IMAGES // unit), moments))
    assert all(_predict(images, ckpt, out, k) is None for k in kills)  # each run was killed mid-way
    assert 0 < len(read_score_rows(out)) < N_IMAGES
    assert _predict(images, ckpt, out, None) == 0
    rows = read_score_rows(out)
    keys = [r["image"] for r in rows]
    assert sorted(keys) == sorted(reference) and len(keys) == len(set(keys)), f"seed {seed}, kills {kills}"
    if suffix == ".csv":  # the raw file too: a kill loses at most a torn row, cut off on resume
        assert Path(out).read_bytes().count(b"\n") == N_IMAGES + 1, f"seed {seed}"
    tolerance = 1e-6 if suffix == ".parquet" else 5e-7 + 1e-6  # CSV rounds to 6 decimals
    assert max(abs(r["probability"] - reference[r["image"]]) for r in rows) <= tolerance, f"seed {seed}"


def test_existing_output_refused_then_resume_scores_nothing_twice(corpus, reference, tmp_path, capsys):
    images, ckpt = corpus
    out = tmp_path / "s.csv"
    args = ["predict", *[str(p) for p in sorted(images.iterdir())[:3]], "--checkpoint", str(ckpt), "-o", str(out),
            "--no-progress"]
    assert main(args) == 0
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "--resume" in err and "Traceback" not in err
    (images.parent / "more.txt").write_text("\n".join(str(p) for p in sorted(images.iterdir())[:5]) + "\n")
    assert main([*args[:1], str(images.parent / "more.txt"), *args[4:], "--resume"]) == 0
    assert "wrote 2 rows" in capsys.readouterr().out
    assert [r["image"] for r in read_score_rows(out)] == [str(p) for p in sorted(images.iterdir())[:5]]


def test_stdin_list_and_changed_input_rescored(corpus, reference, tmp_path, monkeypatch, capsys):
    images, ckpt = corpus
    src = tmp_path / "a.png"
    src.write_bytes((images / "img000.png").read_bytes())
    out = tmp_path / "s.parquet"
    args = ["predict", "-", "--checkpoint", str(ckpt), "-o", str(out), "--no-progress", "--resume"]
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{src}\n{images / 'img001.png'}\n"))
    assert main(args) == 0
    first = {r["image"]: r for r in read_score_rows(out)}
    assert first[str(src)]["probability"] == pytest.approx(reference[str(images / "img000.png")], abs=1e-6)
    src.write_bytes((images / "img002.png").read_bytes())  # changed: other size and time
    os.utime(src, (1e9, 1e9))
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{src}\n{images / 'img001.png'}\n"))
    capsys.readouterr()
    assert main(args) == 0
    assert "wrote 1 rows" in capsys.readouterr().out
    rows = {r["image"]: r for r in read_score_rows(out)}
    assert len(rows) == 2 and rows[str(src)]["mtime"] == 1e9
    assert rows[str(src)]["probability"] == pytest.approx(reference[str(images / "img002.png")], abs=1e-6)
