"""Child process of the memory tests: decode and score one image file with spai-tiny; print RSS figures as JSON.

``python tools/reliability/memprobe.py IMAGE [--chunk N] [--max-pixels N]``. Figures (bytes):

* ``decode_delta``: the highest RSS sampled (psutil, every 2 ms) while decoding minus the RSS after the model was built and warmed up (the
  decoder's transient peak: encoded bytes + PIL's image + the uint8 tensor);
* ``encode_extra``: the highest RSS sampled (psutil, every 2 ms) while ``score_images`` ran on the decoded uint8
  tensor, minus the RSS just before: what chunked patch encoding costs on top of the image. Chunking keeps it
  O(chunk) whatever the image size; materialising every patch as float32 would make it O(image) (x 4.0 bytes).
* ``peak_delta``: the highest of both minus the baseline: the whole call's worst moment.

(``ru_maxrss`` is not used: it also holds the warm-up's peak, which hides small images' figures.)
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("image")
    p.add_argument("--chunk", type=int, default=None)
    p.add_argument("--max-pixels", type=int, default=None)
    args = p.parse_args()

    import psutil
    import torch

    import spai
    from spai.infer.images import decode_image
    from spai.infer.runners import torch_chunk

    torch.manual_seed(0)
    model = spai.create_model("spai-tiny")
    chunk = args.chunk or torch_chunk(model)
    model.score_images([torch.zeros(3, 896, 896, dtype=torch.uint8)], chunk_size=chunk)  # warm-up, 16 patches
    proc = psutil.Process()
    baseline = proc.memory_info().rss
    limits = {"max_pixels": args.max_pixels} if args.max_pixels else {}

    def sampled(fn):
        """Run fn() while a thread samples RSS every 2 ms; (result, max sampled RSS, seconds)."""
        samples = [proc.memory_info().rss]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                samples.append(proc.memory_info().rss)
                time.sleep(0.002)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        t = time.perf_counter()
        try:
            out = fn()
        finally:
            done.set()
            thread.join()
        return out, max(samples + [proc.memory_info().rss]), time.perf_counter() - t

    image, decode_max, decode_s = sampled(lambda: decode_image(args.image, **limits))
    before = proc.memory_info().rss
    (res,), encode_max, score_s = sampled(lambda: model.score_images([image], chunk_size=chunk))
    print(json.dumps({
        "width": int(image.shape[1]), "height": int(image.shape[0]), "image_bytes": int(image.size),
        "file_bytes": Path(args.image).stat().st_size, "num_patches": res.num_patches, "chunk": chunk,
        "probability": res.probability, "baseline_rss": baseline,
        "decode_delta": decode_max - baseline, "encode_extra": encode_max - before,
        "peak_delta": max(decode_max, encode_max) - baseline, "all_float_patches_bytes": res.num_patches * 3 * 224 * 224 * 4,
        "decode_seconds": decode_s, "score_seconds": score_s}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
