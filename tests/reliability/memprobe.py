"""Child process of the memory tests: decode and score one image file with spai-tiny; print RSS figures as JSON.

``python tests/reliability/memprobe.py IMAGE [--chunk N] [--max-pixels N]``. Figures (bytes):

* ``decode_delta``: ``ru_maxrss`` after decoding minus the RSS after the model was built and warmed up (the
  decoder's transient peak: encoded bytes + PIL's image + the uint8 tensor);
* ``encode_extra``: the highest RSS sampled (psutil, every 2 ms) while ``score_images`` ran on the decoded uint8
  tensor, minus the RSS just before: what chunked patch encoding costs on top of the image. Chunking keeps it
  O(chunk) whatever the image size; materialising every patch as float32 would make it O(image) (x 4.0 bytes).
* ``peak_delta``: ``ru_maxrss`` at the end minus the baseline: the whole call's worst moment.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def maxrss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("image")
    p.add_argument("--chunk", type=int, default=None)
    p.add_argument("--max-pixels", type=int, default=None)
    args = p.parse_args()

    import psutil
    import torch

    import spai
    from spai.images import decode_image

    torch.manual_seed(0)
    model = spai.create_model("spai-tiny")
    chunk = args.chunk or model.default_chunk_size()
    model.score_images([torch.zeros(3, 896, 896, dtype=torch.uint8)], chunk_size=chunk)  # warm-up, 16 patches
    proc = psutil.Process()
    baseline = proc.memory_info().rss
    limits = {"max_pixels": args.max_pixels} if args.max_pixels else {}
    t0 = time.perf_counter()
    image = decode_image(args.image, **limits)
    decode_s = time.perf_counter() - t0
    decode_peak = maxrss()
    before = proc.memory_info().rss
    samples = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append(proc.memory_info().rss)
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t1 = time.perf_counter()
    (res,) = model.score_images([image], chunk_size=chunk)
    score_s = time.perf_counter() - t1
    done.set()
    sampler.join()
    print(json.dumps({
        "width": int(image.shape[2]), "height": int(image.shape[1]), "image_bytes": int(image.numel()),
        "file_bytes": Path(args.image).stat().st_size, "num_patches": res.num_patches, "chunk": chunk,
        "probability": res.probability, "baseline_rss": baseline,
        "decode_delta": decode_peak - baseline, "encode_extra": max(samples) - before,
        "peak_delta": maxrss() - baseline, "all_float_patches_bytes": res.num_patches * 3 * 224 * 224 * 4,
        "decode_seconds": decode_s, "score_seconds": score_s}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
