"""One CPU contender in its own fresh process: the original algorithm or one of our routes, driven over pipes.

``python -m benchmarks.route_worker '<json spec>'`` (what :class:`RouteWorker` starts) builds the contender, warms it
up on one patch, prints ``{"ready": ...}`` and then answers one JSON line per command read from stdin:

* ``{"cmd": "image", "height": H, "width": W, "seed": S}`` -> makes that H x W x 3 uint8 image (outside timing);
* ``{"cmd": "score"}`` -> scores it: ``logit``, ``seconds``, ``peak_mb`` (this image's peak RSS: the kernel's
  ``VmHWM`` after resetting it) and ``process_peak_mb`` (the process's high-water mark since start);
* ``{"cmd": "stop"}``.

Each contender is a separate process so that its memory is its own: the ORT routes never import torch, the torch
routes and the baselines do. Threads: the cores available to the process, the same for every contender
(:func:`spai.infer.runners.available_cores`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from spai.lazy import lazy_import

torch = lazy_import("torch")

ROOT = Path(__file__).resolve().parent.parent
MB = 1024 * 1024


@dataclass(frozen=True)
class ContenderSpec:
    """What a worker runs: ``contender`` is ``original-<chunk>`` (the model's original algorithm, ``chunk``
    patches per encoder call; ``original-cfg`` = the config's FEATURE_EXTRACTION_BATCH) or ``<backend>-<precision>``
    (a route of :func:`spai.infer.runners.runners_for`)."""

    contender: str
    model: str  # named config (seeded random weights, torch.manual_seed(0)) unless checkpoint is set
    checkpoint: str | None = None
    onnx_dir: str | None = None
    chunk: int | None = None  # override the route's declared chunk
    threads: int | None = None


def status_mb(key: str) -> float:
    """``VmHWM`` (peak RSS) or ``VmRSS`` of this process from /proc, in MiB (0 where /proc is missing)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def reset_peak() -> None:
    """Reset the kernel's peak-RSS counter of this process (``echo 5 > /proc/self/clear_refs``)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _model(spec: ContenderSpec) -> Any:

    import spai

    torch.set_num_threads(spec.threads)
    if spec.checkpoint:
        return spai.create_model(checkpoint=spec.checkpoint)
    torch.manual_seed(0)
    return spai.create_model(spec.model)


def _patch_spec(spec: ContenderSpec, model: Any) -> Any:
    if model is not None:
        return model.patch_spec
    from spai.model.config import get_config
    from spai.model.patching import patch_spec_from_config

    return patch_spec_from_config(get_config(spec.model))


def build(spec: ContenderSpec) -> Callable[[np.ndarray], float]:
    """The contender as ``score(image) -> logit`` (warmed up on one patch)."""
    kind, _, variant = spec.contender.partition("-")
    if kind == "original":

        from benchmarks.baseline import original_baseline

        model = _model(spec)
        base = original_baseline(model, None if variant == "cfg" else int(variant))
        base.encode(torch.rand(1, 3, 224, 224))
        return base.score
    from spai.infer.routes import runners_for
    from spai.infer.scorer import Scorer
    from spai.model.specs import PATCH_FEATURES, PATCH_MASK, PATCHES, PATCHES_INPUT

    model = _model(spec) if kind == "torch" else None
    route = runners_for(kind, variant, model=model, onnx_dir=spec.onnx_dir, chunk=spec.chunk,
                        threads=spec.threads).__enter__()
    encoder, aggregator = route.encoder, route.aggregator
    scorer = Scorer.for_route(route, spec=_patch_spec(spec, model))
    dim = encoder.infer({PATCHES: np.zeros((1, *PATCHES_INPUT.shape), encoder.input_dtype(PATCHES))})
    aggregator.infer({PATCH_FEATURES: dim[PATCH_FEATURES][None], PATCH_MASK: np.ones((1, 1), bool)})
    return lambda image: float(scorer.score_images([image])[0].logit)


def serve(spec: ContenderSpec) -> None:
    """The worker loop (stdin commands -> stdout JSON lines)."""
    from spai.infer.runners import available_cores

    spec = ContenderSpec(**{**asdict(spec), "threads": spec.threads or available_cores()})
    start = time.perf_counter()
    score = build(spec)
    process_peak = status_mb("VmHWM")
    _reply(ready=True, load_seconds=time.perf_counter() - start, rss_mb=status_mb("VmRSS"), peak_mb=process_peak,
           threads=spec.threads, torch_loaded="torch" in sys.modules, pid=os.getpid())
    image: np.ndarray | None = None
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "stop":
            return
        if cmd["cmd"] == "image":
            rng = np.random.default_rng(cmd.get("seed", 0))
            image = rng.integers(0, 256, (cmd["height"], cmd["width"], 3), dtype=np.uint8)
            _reply(ok=True)
        elif cmd["cmd"] == "score":
            reset_peak()
            t = time.perf_counter()
            logit = score(image)
            seconds = time.perf_counter() - t
            peak = status_mb("VmHWM")
            process_peak = max(process_peak, peak)
            _reply(logit=logit, seconds=seconds, peak_mb=peak, process_peak_mb=process_peak,
                   rss_mb=status_mb("VmRSS"))


_REPLIES: Any = None  # the pipe to the parent; fd 1 itself is pointed at stderr so that library prints stay out


def _reply(**data: Any) -> None:
    _REPLIES.write(json.dumps(data) + "\n")
    _REPLIES.flush()


class RouteWorker:
    """The parent's handle on one worker process: ``image(h, w)``, ``score() -> dict``, ``close()``."""

    def __init__(self, spec: ContenderSpec, timeout_s: float = 1800) -> None:
        self.spec = spec
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        self.proc = subprocess.Popen([sys.executable, "-m", "benchmarks.route_worker", json.dumps(asdict(spec))],
                                     cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.ready = self._read()

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            raise RuntimeError(f"route worker {self.spec.contender} ({self.spec.model}) exited with code {code}")
        return json.loads(line)

    def _ask(self, **cmd: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def image(self, height: int, width: int, seed: int = 0) -> None:
        self._ask(cmd="image", height=height, width=width, seed=seed)

    def score(self) -> dict[str, Any]:
        return self._ask(cmd="score")

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self._ask_stop()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()

    def _ask_stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"cmd": "stop"}) + "\n")
        self.proc.stdin.close()

    def __enter__(self) -> RouteWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    _REPLIES = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    serve(ContenderSpec(**json.loads(sys.argv[1])))
