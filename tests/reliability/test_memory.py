"""Peak memory of scoring huge images (psutil / ru_maxrss in a subprocess, spai-tiny, CPU).

Bounds: decoding costs at most ``3.5 x`` the uint8 image + the encoded file + 64 MiB (PIL's 4-byte/pixel image
and the 3 x H x W uint8 tensor, no float copy of the image); scoring the decoded tensor costs at most
``ENCODE_BOUND`` on top, whatever the image size (only one chunk of patches exists as floats at a time).
The 8k x 8k and 64 MP runs are ``slow``; CI measures a 2048 x 2048 image with the same bounds.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import TOOLS_DIR, png_bomb
from PIL import Image

MiB = 2**20
ENCODE_BOUND = 192 * MiB  # chunk of 16 patches + encoder activations + features; independent of image size


def make_jpeg(path: Path, width: int, height: int) -> Path:
    tile = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    arr = np.tile(tile, (height // 256 + 1, width // 256 + 1, 1))[:height, :width]
    Image.fromarray(arr).save(path, quality=90)
    return path


def probe(image: Path, env: dict, *extra: str) -> dict:
    proc = subprocess.run([sys.executable, str(TOOLS_DIR / "memprobe.py"), str(image), *extra], capture_output=True,
                          text=True, env=env, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def check_and_record(name: str, r: dict, record) -> None:
    decode_bound = 3.5 * r["image_bytes"] + r["file_bytes"] + 64 * MiB
    record("memory", name, width=r["width"], height=r["height"], patches=r["num_patches"], chunk=r["chunk"],
           uint8_image_mib=round(r["image_bytes"] / MiB), file_mib=round(r["file_bytes"] / MiB, 1),
           baseline_rss_mib=round(r["baseline_rss"] / MiB), decode_peak_mib=round(r["decode_delta"] / MiB),
           encode_extra_mib=round(r["encode_extra"] / MiB), peak_delta_mib=round(r["peak_delta"] / MiB),
           all_float_patches_mib=round(r["all_float_patches_bytes"] / MiB),
           seconds=round(r["decode_seconds"] + r["score_seconds"], 1))
    assert r["decode_delta"] <= decode_bound, (r["decode_delta"] / MiB, decode_bound / MiB)
    assert r["encode_extra"] <= ENCODE_BOUND, r["encode_extra"] / MiB
    assert r["peak_delta"] <= max(decode_bound, r["image_bytes"] + ENCODE_BOUND)


def test_2k_image_memory_is_bounded(tmp_path, spai_env, record):
    r = probe(make_jpeg(tmp_path / "2k.jpg", 2048, 2048), spai_env)
    assert r["num_patches"] == 81
    check_and_record("2048 x 2048 (4 MP)", r, record)


@pytest.mark.slow
@pytest.mark.parametrize("width,height,name", [(8192, 8192, "8192 x 8192 (67 MP)"), (9248, 6936, "9248 x 6936 (64 MP)")])
def test_huge_image_memory_is_bounded(width, height, name, tmp_path, spai_env, record):
    r = probe(make_jpeg(tmp_path / "huge.jpg", width, height), spai_env)
    check_and_record(name, r, record)
    assert r["encode_extra"] < r["all_float_patches_bytes"] / 3  # patches really are chunked


def test_pixel_limit_is_configurable_above_pils_default(tmp_path, record):
    """PIL refuses > 179 MP on its own; a larger --max-pixels must really allow more (header-only check)."""
    import spai
    from spai.errors import ImageError

    data = png_bomb(14000, 14000)  # 196 MP header, a few rows of data
    with pytest.raises(ImageError, match="decompression-bomb"):
        spai.decode_image(data)
    with pytest.raises(ImageError, match="decompression-bomb"):
        spai.decode_image(data, max_pixels=150_000_000)
    from spai.infer.images import DEFAULT_MAX_BYTES, _open

    im = _open(data, DEFAULT_MAX_BYTES, "bomb.png", max_pixels=200_000_000)  # header only: lazy, no pixels yet
    assert im.size == (14000, 14000)
    im.close()
    record("inputs", "image over PIL's own 179 MP bomb limit with a raised max_pixels", api="passes the limit",
           handling="max_pixels above PIL's default is honoured (PIL's global limit is raised to match)")
