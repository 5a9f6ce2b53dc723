"""The same image gets the same score across runs, processes, chunk sizes and batch compositions (fp32)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import torch
from helpers import good_jpeg

import spai

TOL = 1e-6


def test_same_score_across_batch_compositions_and_chunks(tiny_model, tmp_path, record):
    path = tmp_path / "img.jpg"
    path.write_bytes(good_jpeg(500, 700, seed=3))
    others = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(h))
              for h, w in ((224, 224), (900, 300), (64, 64), (1200, 1000))]
    alone = tiny_model.score_images([path])[0].probability
    runs = {"alone": alone, "alone again": tiny_model.score_images([path])[0].probability}
    runs["first of 5"] = tiny_model.score_images([path, *others])[0].probability
    runs["last of 5"] = tiny_model.score_images([*others, path])[-1].probability
    runs["middle, chunk 1"] = tiny_model.score_images([others[0], path, others[1]], chunk_size=1)[1].probability
    runs["chunk 7"] = tiny_model.score_images([path], chunk_size=7)[0].probability
    runs["chunk 64"] = tiny_model.score_images([others[3], path], chunk_size=64)[1].probability
    runs["twice in a batch"] = tiny_model.score_images([path, path])[1].probability
    spread = max(runs.values()) - min(runs.values())
    record("determinism", "one image, 8 batch compositions / chunk sizes (in process)",
           max_abs_diff=f"{spread:.2e}", tolerance=TOL)
    assert spread <= TOL, runs


def test_same_score_in_a_fresh_process(tiny_model, tmp_path, spai_env, record):
    path = tmp_path / "img.jpg"
    path.write_bytes(good_jpeg(400, 600, seed=4))
    ckpt = spai.save_checkpoint(tiny_model, tmp_path / "tiny.pth")
    here = tiny_model.score_images([path])[0].probability
    code = ("import json, sys, spai; m = spai.create_model(checkpoint=sys.argv[1]); "
            "print(json.dumps([m.score_images([sys.argv[2]])[0].probability for _ in range(2)]))")
    out = subprocess.run([sys.executable, "-c", code, str(ckpt), str(path)], capture_output=True, text=True,
                         env=spai_env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    there = json.loads(out.stdout.strip().splitlines()[-1])
    diff = float(np.max(np.abs(np.array(there) - here)))
    record("determinism", "same image, fresh process from a checkpoint (2 runs)", max_abs_diff=f"{diff:.2e}",
           tolerance=TOL)
    assert diff <= TOL, (here, there)
