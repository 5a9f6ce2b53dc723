"""One-shot GPU check: ``python benchmarks/gpu_check.py -o DIR`` on a machine with a CUDA GPU, from a plain checkout.

In one run (at most ~8 minutes on an H100/H200-class GPU; ``--budget-s``), with ``spai-fusion-b16`` (random
weights): the GEMM peak (fp32, tf32, fp16, bf16) measured in the same run; fp16 and bf16 autocast parity against
fp32 on 256 random patches (max |dp|, flips; the one comparator, :mod:`spai.parity`); patch-encoder throughput
at batch 1, 16, 64, 256 for eager fp32, TF32, fp16, bf16, CUDA graphs and ``torch.compile`` (the step builders of
:mod:`benchmarks.backends`), with % of the measured peak; the aggregator at 16 x 1024; ONNX Runtime with the CUDA
provider where installed; where ``tensorrt`` imports: the engine build (``spai export``'s pipeline, with
``--fre-fp16`` and without), its parity report, its throughput on device inputs (engine memory in the peak) and
whether attention runs as a fused kernel; and, where nvidia-pytriton brings its tritonserver, the served rate:
a ``python-torch`` repository of the model (KIND_GPU, fp16 autocast) on the bundled server, patches/s through the
``spai`` model at concurrency 1, 16 and 64 beside the in-process rate of the same route. Writes
``gpu_check.json``, ``gpu_check.md`` and ``gpu_check.png`` under DIR and prints where. A phase that fails is
recorded with its error; the others still run.

``--dry-run`` runs the same code path on the CPU with ``spai-tiny`` and tiny sizes (a test runs it: < 2 minutes).
Missing packages are named exactly (which import failed, which wheel brings it): see docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import shutil
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run by path from a plain checkout
    sys.path.insert(0, str(ROOT))

# import name -> the wheel that brings it (open_clip_torch's own needs included: the borrowed GPU image has
# torch, onnx and onnxruntime but not open_clip)
REQUIRED = {"torch": "torch", "numpy": "numpy", "PIL": "pillow", "yaml": "pyyaml", "psutil": "psutil",
            "tqdm": "tqdm", "open_clip": "open_clip_torch", "ftfy": "ftfy", "wcwidth": "wcwidth", "regex": "regex",
            "huggingface_hub": "huggingface_hub", "safetensors": "safetensors", "timm": "timm",
            "torchvision": "torchvision", "onnx": "onnx", "onnxruntime": "onnxruntime",
            "onnxconverter_common": "onnxconverter-common", "matplotlib": "matplotlib"}
OPTIONAL = {"tensorrt": "tensorrt (or the NGC TensorRT container)"}
SERVED = {"pytriton": "nvidia-pytriton", "tritonclient.http": "tritonclient[http]"}  # the served phase's
MODES = ("fp32", "tf32", "fp16", "bf16", "cudagraph-fp16", "compile-fp16")
PEAK_OF = {"fp32": "fp32", "tf32": "tf32", "fp16": "fp16", "bf16": "bf16", "cudagraph-fp16": "fp16",
           "compile-fp16": "fp16", "trt-fp16": "fp16", "trt-fre-fp16": "fp16", "ort-cuda-fp16": "fp16"}


@dataclass(frozen=True)
class Sizes:
    """What one run measures: the full GPU check or the CPU dry run."""

    model: str
    batches: tuple[int, ...]
    patches: int  # random patches of the parity checks
    gemm_n: int
    aggregator: tuple[int, int]  # images x patches
    warmup: int
    iters: int
    engine_max_batch: int
    compile_batches: tuple[int, ...]  # torch.compile: every batch on a GPU; one on the CPU (compiling is slow)
    served: dict[int, int]  # served phase: concurrency -> requests (448 x 448 images: 4 patches each)
    served_warmup: int  # requests before the timed ones (they also give the served-vs-in-process parity)
    served_tuning: dict[str, int]  # changes to the python-torch repository's default tuning


GPU = Sizes("spai-fusion-b16", (1, 16, 64, 256), 256, 8192, (16, 1024), 3, 10, 256, (1, 16, 64, 256),
            {1: 64, 16: 256, 64: 512}, 64, {})
# the dry run's server: one `spai` instance (two cores start and run every stub)
DRY = Sizes("spai-tiny", (1, 2), 8, 256, (2, 16), 1, 2, 2, (2,), {1: 2, 4: 4, 8: 8}, 4, {"entry_instances": 1})
SERVED_IMAGE = 448  # pixels a side: a 2 x 2 patch grid, no padding
SERVED_DISTINCT = 16  # distinct images at most (and at most the warm-up's requests), cycled through the requests


def missing_imports(modules: dict[str, str] = REQUIRED) -> list[str]:
    """One line per module of ``modules`` (import name -> wheel) that does not import: the import, why, the
    wheel to bring."""
    lines = []
    for module, wheel in modules.items():
        try:
            importlib.import_module(module)
        except Exception as e:  # ImportError, or a broken install raising something else
            lacking = str(getattr(e, "name", None) or "")
            why = f"needs `{lacking}`" if lacking and lacking != module else f"{type(e).__name__}: {e}"
            # a package of the module itself (tritonclient of tritonclient.http) is the wheel already named
            needed = lacking and lacking != module and not module.startswith(f"{lacking}.")
            lines.append(f"`import {module}` failed ({why}): pip install {wheel}"
                         + (f" {REQUIRED.get(lacking, lacking)}" if needed else ""))
    return lines


@dataclass
class Check:
    """The run's state: where it writes, what it measured so far, how much time is left."""

    out: Path
    sizes: Sizes
    device: Any
    budget_s: float
    started: float = field(default_factory=time.perf_counter)
    results: dict[str, Any] = field(default_factory=dict)
    model: Any = None  # the random-weight model under test, on ``device``

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.started)

    def save(self) -> Path:
        path = self.out / "gpu_check.json"
        path.write_text(json.dumps(self.results, indent=2, default=str))
        return path


@contextlib.contextmanager
def phase(check: Check, name: str, needs_s: float = 0.0) -> Iterator[dict[str, Any]]:
    """Record one phase: its results, its seconds, or why it was skipped / what failed (the run goes on)."""
    entry: dict[str, Any] = {}
    check.results.setdefault("phases", {})[name] = entry
    t0 = time.perf_counter()
    try:
        if check.left() < needs_s:
            raise Skip(f"time budget: {check.left():.0f} s left, this phase needs about {needs_s:.0f} s")
        yield entry
    except Skip as s:
        entry["skipped"] = str(s)
    except Exception as e:  # recorded, never lost: the next phase still runs
        entry["error"] = f"{type(e).__name__}: {e}"
        entry["traceback"] = traceback.format_exc(limit=6)
    entry["seconds"] = round(time.perf_counter() - t0, 2)
    print(f"[{time.perf_counter() - check.started:6.1f}s] {name}: "
          f"{entry.get('skipped') or entry.get('error') or 'done'}", flush=True)
    check.save()


class Skip(Exception):
    """A phase that cannot run here (no CUDA, no TensorRT, no time left)."""


def seconds_per_step(step: Callable[[], Any], device: Any, warmup: int, iters: int) -> float:
    """Median seconds of ``step`` (synchronised on CUDA) after ``warmup`` calls."""
    import statistics

    import torch

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        step()
    sync()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def environment(check: Check) -> dict[str, Any]:
    import torch

    from export.trt import tensorrt_importable

    env: dict[str, Any] = {"torch": torch.__version__, "cuda": torch.version.cuda, "device": str(check.device),
                           "dry_run": check.device.type != "cuda", "model": check.sizes.model}
    if check.device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(check.device)
        env["compute_capability"] = ".".join(map(str, torch.cuda.get_device_capability(check.device)))
    if tensorrt_importable():
        import tensorrt

        env["tensorrt"] = tensorrt.__version__
    try:
        import onnxruntime

        env["onnxruntime"], env["ort_providers"] = onnxruntime.__version__, onnxruntime.get_available_providers()
    except ImportError:
        pass
    return env


def gemm_peaks(check: Check, entry: dict[str, Any]) -> None:
    """TFLOP/s of an n x n GEMM per dtype (tf32: fp32 with TF32 allowed); on the CPU fp32 only."""
    import torch

    n, dev = check.sizes.gemm_n, check.device
    dtypes = ("fp32", "tf32", "fp16", "bf16") if dev.type == "cuda" else ("fp32",)
    for name in dtypes:
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(name, torch.float32)
        a, b = (torch.randn(n, n, device=dev).to(dtype) for _ in range(2))
        with tf32(name == "tf32"):
            s = seconds_per_step(lambda a=a, b=b: torch.mm(a, b), dev, check.sizes.warmup, check.sizes.iters)
        entry[name] = {"n": n, "tflops": round(2 * n ** 3 / s / 1e12, 3)}


@contextlib.contextmanager
def tf32(allowed: bool) -> Iterator[None]:
    """TF32 for CUDA matmuls and convolutions on (``allowed``) or off, restored afterwards."""
    import torch

    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = allowed
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def autocast_parity(check: Check, model: Any, entry: dict[str, Any]) -> None:
    """fp16 and bf16 autocast against fp32 (TF32 off) on random patches, through spai.parity (the autocast runner
    the python-torch graph models serve with)."""
    from serving.models.torch_graph import torch_runner
    from spai.parity import compare_routes
    from spai.runners import Route

    routes = [Route(f"autocast-{p}", p, torch_runner(model, "patch_encoder", p), torch_runner(model, "aggregator", p))
              for p in ("fp16", "bf16")]
    with tf32(False):
        report = compare_routes(model, routes, n_random=check.sizes.patches)
    for name, result in report.backends.items():
        stats = result["random_patches"]
        entry[name] = {"max_abs_dprob": stats["max_abs_dprob"], "flips": stats["decision_flips"],
                       "max_abs_dfeature": result["patch_features"]["max_abs"], "n_groups": stats["n"]}
    entry["patches"] = check.sizes.patches
    entry["failures"] = report.failures


def encoder_steps(model: Any, x: Any, mode: str, compiled: dict[str, Any]) -> Callable[[], Any]:
    """The step of one mode at batch ``x`` (benchmarks.backends' builders; compile reused across batches)."""
    import copy

    import torch

    from benchmarks import backends

    if mode in ("fp32", "tf32"):
        step = backends.torch_step(model, x, "fp32")
        return (lambda: _with_tf32(step)) if mode == "tf32" else step
    if mode in ("fp16", "bf16"):
        return backends.torch_step(model, x, mode)
    if mode == "cudagraph-fp16":
        if x.device.type != "cuda":
            raise Skip("CUDA graphs need a CUDA device")
        return backends.cudagraph_step(model, x, "fp16")
    if "fn" not in compiled:  # one compiled function for every batch (dynamic shapes after the first recompile)
        compiled["fn"] = torch.compile(copy.deepcopy(model).half().encode_patches)
    half = x.half()
    fn = compiled["fn"]

    def step() -> Any:
        with torch.inference_mode():
            return fn(half)
    return step


def _with_tf32(step: Callable[[], Any]) -> Any:
    with tf32(True):
        return step()


def encoder_throughput(check: Check, model: Any, modes: tuple[str, ...], entry: dict[str, Any]) -> None:
    """Patches/s (and % of the same-dtype GEMM peak) per mode x batch."""
    import torch

    flops = patch_flops(check, model)
    for mode in modes:
        if mode in ("tf32", "cudagraph-fp16") and check.device.type != "cuda":
            entry[mode] = {"skipped": f"{mode} needs a CUDA device"}
            continue
        rows, compiled = {}, {}
        for batch in check.sizes.compile_batches if mode.startswith("compile") else check.sizes.batches:
            if check.left() < 20:
                rows[str(batch)] = {"skipped": "time budget"}
                continue
            x = torch.rand(batch, 3, 224, 224, device=check.device)
            with tf32(False):
                rows[str(batch)] = time_case(check, encoder_steps(model, x, mode, compiled), batch, flops, mode)
            del x
        entry[mode] = rows


def patch_flops(check: Check, model: Any) -> float:
    """FLOPs of one patch (benchmarks.common.count_flops on the CPU-countable attention path)."""
    import torch

    from benchmarks.common import count_flops

    if "flops_per_patch" not in check.results:
        check.results["flops_per_patch"] = count_flops(model.encode_patches, torch.rand(1, 3, 224, 224,
                                                                                       device=check.device))
    return float(check.results["flops_per_patch"])


def time_case(check: Check, step: Callable[[], Any], batch: int, flops: float, mode: str,
              extra_bytes: int = 0) -> dict[str, Any]:
    """patches/s, ms per step, % of the measured peak of the mode's dtype, CUDA peak memory (+ extra_bytes)."""
    import torch

    cuda = check.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(check.device)
        torch.cuda.reset_peak_memory_stats(check.device)
    s = seconds_per_step(step, check.device, check.sizes.warmup, check.sizes.iters)
    row: dict[str, Any] = {"patches_per_s": round(batch / s, 2), "ms_per_step": round(s * 1e3, 3)}
    peak = check.results.get("phases", {}).get("gemm_peak", {}).get(PEAK_OF.get(mode, "fp32") if cuda else "fp32")
    if isinstance(peak, dict) and peak.get("tflops"):
        row["pct_of_peak"] = round(100 * flops * batch / s / (peak["tflops"] * 1e12), 1)
    if cuda:
        row["cuda_peak_mb"] = round((torch.cuda.max_memory_allocated(check.device) + extra_bytes) / 2**20, 1)
    return row


def aggregator_case(check: Check, model: Any, entry: dict[str, Any]) -> None:
    """model.aggregate on images x patches features (fp32, TF32 off)."""
    import torch

    images, patches = check.sizes.aggregator
    feats = torch.randn(images, patches, int(model.feature_dim), device=check.device)
    mask = torch.ones(images, patches, dtype=torch.bool, device=check.device)

    def step() -> Any:
        with torch.inference_mode():
            return model.aggregate(feats, mask)
    with tf32(False):
        s = seconds_per_step(step, check.device, check.sizes.warmup, check.sizes.iters)
    entry["eager-fp32"] = {"images": images, "patches": patches, "ms_per_call": round(s * 1e3, 3),
                           "images_per_s": round(images / s, 1)}


def onnx_export(check: Check, model: Any, fre_fp16: bool, entry: dict[str, Any], base: Any = None) -> Any:
    """spai export's ONNX step for ``model`` (fp32 graphs, then the mixed-precision encoder; with ``fre_fp16`` its
    FRE Linear layers in FP16 too); ``base``: artifacts whose fp32 graphs to reuse. Returns the artifacts."""
    import copy

    from export.fp16 import fp16_from_onnx
    from export.onnx import onnx_from_torch
    from export.pipeline import OnnxArtifacts
    from spai.specs import ENCODER_FILES

    out = check.out / ("onnx-fre-fp16" if fre_fp16 else "onnx")
    out.mkdir(exist_ok=True)
    # traced on the CPU, as `spai export` does; the fp32 graphs are shared by both FP16 variants
    graphs = base.graphs if base is not None else onnx_from_torch(copy.deepcopy(model).cpu(), out)
    fp16 = fp16_from_onnx(graphs.patch_encoder, out / ENCODER_FILES["fp16"], fre_fp16=fre_fp16)
    entry["directory"] = str(out)
    return OnnxArtifacts(model, f"{check.sizes.model} (random weights)", graphs, fp16, fre_fp16)


def ort_cuda(check: Check, art: Any, entry: dict[str, Any]) -> None:
    """ONNX Runtime (CUDA provider where this build has it, else the CPU provider in the dry run)."""
    import onnxruntime as ort
    import torch

    from benchmarks.backends import graph_patches
    from spai.runners import OrtRunner
    from spai.specs import PATCHES

    cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    if not cuda and check.device.type == "cuda":
        raise Skip(f"this onnxruntime build has no CUDAExecutionProvider ({ort.get_available_providers()})")
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else ["CPUExecutionProvider"]
    batch = check.sizes.batches[-1]
    feed = {PATCHES: graph_patches(torch.rand(batch, 3, 224, 224))}
    for label, path in (("ort-cuda-fp32", art.graphs.patch_encoder), ("ort-cuda-fp16", art.patch_encoder_fp16)):
        with OrtRunner(path, providers=providers, limits={PATCHES: (batch, 3, 224, 224)}) as runner:
            entry[label] = time_case(check, lambda r=runner: r.infer(feed), batch, patch_flops(check, art.model),
                                     label.replace("ort-cuda-", ""))
    entry["providers"] = providers


ATTENTION_KERNELS = ("fmha", "mha", "flash", "attention", "_attn")


def tensorrt_engines(check: Check, art: Any, label: str, entry: dict[str, Any]) -> None:
    """Build both engines with spai export's pipeline (engine.json included), gate them with the comparator,
    time them on device inputs and look for fused attention in the layer information."""
    from export.compare import write_report
    from export.pipeline import engine_profiles, engines_from_onnx
    from export.trt import BuildOptions, TrtRunner, engine_layer_information, tensorrt_importable
    from spai.parity import compare_routes
    from spai.runners import Route

    if not tensorrt_importable() or check.device.type != "cuda":
        raise Skip("tensorrt does not import here (or no CUDA device): no engine can be built")
    out = check.out / label
    out.mkdir(exist_ok=True)
    profiles = engine_profiles(art.graphs.feature_dim, min_batch=1, opt_batch=min(64, check.sizes.engine_max_batch),
                               max_batch=check.sizes.engine_max_batch)
    t0 = time.perf_counter()
    engines = engines_from_onnx(art, out, profiles, timing_cache=check.out / "timing.cache",
                                options=BuildOptions(detailed_profiling=True))
    entry["build_s"] = round(time.perf_counter() - t0, 1)
    entry["manifest"] = json.loads(Path(engines["manifest"]).read_text())
    with Route(label, "fp16", TrtRunner(engines["patch_encoder"]), TrtRunner(engines["aggregator"])) as route:
        enc, agg = route.encoder, route.aggregator
        report = compare_routes(art.model, [route], n_random=check.sizes.patches)
        write_report(report, out, [f"GPU check: {label} engines of {art.source}"])
        stats = report.backends[label]["random_patches"]
        entry["parity"] = {"max_abs_dprob": stats["max_abs_dprob"], "flips": stats["decision_flips"],
                           "max_abs_dfeature": report.backends[label]["patch_features"]["max_abs"],
                           "failures": report.failures}
        entry["throughput"] = trt_throughput(check, enc, agg, label)
    entry["attention"] = fused_attention(engine_layer_information(engines["patch_encoder"]), out)


def trt_throughput(check: Check, enc: Any, agg: Any, label: str) -> dict[str, Any]:
    """Encoder patches/s per batch and the aggregator at images x patches, inputs already on the device; the
    engines' own device memory is added to the CUDA peak; outputs are copied out after the timed region."""
    import torch

    flops = patch_flops(check, check.model)
    rows: dict[str, Any] = {}
    for batch in check.sizes.batches:
        x = torch.randint(0, 256, (batch, 3, 224, 224), dtype=torch.uint8, device=check.device)
        rows[str(batch)] = time_case(check, lambda x=x: enc.infer_device({"patches": x}), batch, flops, label,
                                     extra_bytes=enc.device_memory_bytes)
        rows[str(batch)]["engine_device_memory_mb"] = round(enc.device_memory_bytes / 2**20, 1)
        rows[str(batch)]["finite"] = all(bool(v.isfinite().all()) for v in enc.infer_device({"patches": x}).values())
    images, patches = check.sizes.aggregator
    feed = {"patch_features": torch.randn(images, patches, int(check.model.feature_dim), device=check.device),
            "patch_mask": torch.ones(images, patches, dtype=torch.bool, device=check.device)}
    s = seconds_per_step(lambda: agg.infer_device(feed), check.device, check.sizes.warmup, check.sizes.iters)
    rows["aggregator"] = {"images": images, "patches": patches, "ms_per_call": round(s * 1e3, 3),
                          "engine_device_memory_mb": round(agg.device_memory_bytes / 2**20, 1)}
    return rows


def fused_attention(layer_json: str, out: Path) -> dict[str, Any]:
    """Layers of the encoder engine whose name or tactic names an attention kernel (detailed profiling)."""
    (out / "patch_encoder.layers.json").write_text(layer_json)
    info = json.loads(layer_json)
    # Only "Layers" is read, by text: TensorRT 11 renamed the inspector's "Bindings" to I/O tensors and split the
    # "Format/DataType" field, but both versions list the layers (names, tactics) under "Layers".
    layers = info.get("Layers", []) if isinstance(info, dict) else []
    names = [json.dumps(layer) if not isinstance(layer, str) else layer for layer in layers]
    hits = [n[:200] for n in names if any(k in n.lower() for k in ATTENTION_KERNELS)]
    return {"layers": len(layers), "attention_layers": len(hits), "examples": hits[:5],
            "layer_information": str(out / "patch_encoder.layers.json")}


def served_throughput(check: Check, model: Any, entry: dict[str, Any]) -> None:
    """The python-torch repository of ``model`` (its weights saved to a checkpoint under DIR/served) on the bundled
    tritonserver: patches/s through the ``spai`` model (``spai score``'s client) per concurrency, beside the
    in-process rate of the same route (the same torch runners through spai.inference); the server is stopped on
    every path."""
    import spai
    from serving.repository import ENTRY, TORCH_VARIANT, build_torch_repository, tuning_with
    from serving.server import TritonServer, bundled_triton_dir, describe_repository

    lacking = missing_imports(SERVED)
    if lacking or (bundled_triton_dir() is None and not shutil.which("tritonserver")):
        raise Skip("no tritonserver to serve with: " + ("; ".join(lacking) or "nvidia-pytriton imports but has no "
                   "bundled tritonserver: pip install --force-reinstall nvidia-pytriton"))
    cuda = check.device.type == "cuda"
    out = check.out / "served"
    checkpoint = spai.save_checkpoint(model, out / "checkpoint.pth")
    device = "gpu" if cuda else "cpu"
    repo = build_torch_repository(checkpoint, out / "repo", device=device, precision="fp16" if cuda else "fp32",
                                  tuning=tuning_with(TORCH_VARIANT, device, **check.sizes.served_tuning))
    models = describe_repository(repo)
    precision, chunk = ("fp16" if cuda else "fp32"), int(models[ENTRY]["encoder_chunk"])
    entry["route"] = {"precision": precision, "kind": models["spai_patch_encoder"]["kind"], "encoder_chunk": chunk,
                      "model": check.sizes.model, "image": f"{SERVED_IMAGE}x{SERVED_IMAGE}", "repository": str(repo)}
    images = served_images(out / "images", min(SERVED_DISTINCT, check.sizes.served_warmup))
    reference = in_process_rate(check, model, images, precision, chunk, entry)
    server = TritonServer(repo)
    try:
        t0 = time.perf_counter()
        server.start(timeout=max(30.0, min(240.0, check.left() - 20)))
        entry["server_start_s"] = round(time.perf_counter() - t0, 1)
        entry["levels"] = served_levels(check, server.http_url, images, reference,
                                        entry["in_process"]["patches_per_s"])
        entry["log"] = str(server.log_path)
    finally:
        t0 = time.perf_counter()
        server.stop()
        entry["server_stop_s"] = round(time.perf_counter() - t0, 1)


def served_images(folder: Path, count: int) -> list[Path]:
    """``count`` random JPEGs of :data:`SERVED_IMAGE` pixels a side (seeded)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        pixels = rng.integers(0, 256, (SERVED_IMAGE, SERVED_IMAGE, 3), dtype=np.uint8)
        paths.append(folder / f"served_{i:02d}.jpg")
        Image.fromarray(pixels).save(paths[-1], quality=90)
    return paths


def cycled(images: list[Path], n: int) -> list[Path]:
    return [images[i % len(images)] for i in range(n)]


def in_process_rate(check: Check, model: Any, images: list[Path], precision: str, chunk: int,
                    entry: dict[str, Any]) -> dict[str, float]:
    """Patches/s of the served route in this process (the autocast runner pair, chunks of the ``spai`` model's
    encoder requests) on as many images as the largest concurrency level sends; returns image -> probability."""
    import torch

    from serving.models.torch_graph import torch_runner
    from spai.inference import Scorer

    with torch_runner(model, "patch_encoder", precision, chunk) as enc, \
            torch_runner(model, "aggregator", precision) as agg:
        scorer = Scorer(enc, agg, spec=model.patch_spec, calibration=model.calibration)
        reference = {s.image: float(s.probability or 0) for s in scorer.score_images(images)}  # also a warm-up
        paths = cycled(images, max(check.sizes.served.values()))
        t0 = time.perf_counter()
        scores = scorer.score_images(paths)
        seconds = time.perf_counter() - t0
    patches = sum(s.num_patches for s in scores)
    entry["in_process"] = {"images": len(paths), "patches_per_s": round(patches / seconds, 2),
                           "images_per_s": round(len(paths) / seconds, 2), "seconds": round(seconds, 2)}
    if check.device.type == "cuda":
        torch.cuda.empty_cache()  # the server's instances share this GPU
    return reference


def served_levels(check: Check, url: str, images: list[Path], reference: dict[str, float], rate: float
                  ) -> dict[str, Any]:
    """Per concurrency level: its requests' patches/s, images/s, latency percentiles and ratio to the in-process
    ``rate``; the warm-up's probabilities against the in-process ``reference`` (max |dp|)."""
    import numpy as np

    from serving.client import SpaiClient

    client = SpaiClient(url, retries=0)
    levels: dict[str, Any] = {}
    warm = client.score_paths(cycled(images, check.sizes.served_warmup), concurrency=max(check.sizes.served),
                              progress=False)
    failed(warm)
    levels["max_abs_dprob"] = float(max(abs(float(r.probability or 0) - reference[r.image]) for r in warm))
    for concurrency, requests in check.sizes.served.items():
        if check.left() < 10:
            levels[str(concurrency)] = {"skipped": "time budget"}
            continue
        t0 = time.perf_counter()
        rows = client.score_paths(cycled(images, requests), concurrency=concurrency, progress=False)
        seconds = time.perf_counter() - t0
        failed(rows)
        latency = np.array([r.latency_ms for r in rows])
        patches = sum(r.num_patches for r in rows)
        levels[str(concurrency)] = {"requests": requests, "patches_per_s": round(patches / seconds, 2),
                                    "images_per_s": round(requests / seconds, 2),
                                    "p50_ms": round(float(np.percentile(latency, 50)), 1),
                                    "p99_ms": round(float(np.percentile(latency, 99)), 1),
                                    "served_over_in_process": round(patches / seconds / rate, 3)}
    return levels


def failed(rows: list[Any]) -> None:
    """RuntimeError naming the first request the server failed (a measured rate must count answered requests)."""
    errors = [r.error for r in rows if r.error]
    if errors:
        raise RuntimeError(f"{len(errors)} of {len(rows)} served requests failed; first: {errors[0]}")


def write_markdown(check: Check) -> Path:
    """gpu_check.md: every phase, with the numbers of the JSON."""
    r = check.results
    lines = ["# spai GPU check", "", "| key | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in r.get("environment", {}).items()]
    for name, entry in r.get("phases", {}).items():
        lines += ["", f"## {name} ({entry.get('seconds', 0)} s)", ""]
        if "skipped" in entry or "error" in entry:
            kind = "skipped" if "skipped" in entry else "error"
            lines.append(f"**{kind}**: {entry[kind]}")
            continue
        if name.startswith("encoder"):
            lines += encoder_table(entry)
        elif name == "served":
            lines += served_table(entry)
        else:
            lines += ["```json", json.dumps({k: v for k, v in entry.items() if k != "seconds"}, indent=1,
                                            default=str)[:4000], "```"]
    lines += ["", f"Total: {time.perf_counter() - check.started:.0f} s"]
    path = check.out / "gpu_check.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def encoder_table(entry: dict[str, Any]) -> list[str]:
    modes = [m for m in entry if isinstance(entry[m], dict) and m != "seconds"]
    batches = sorted({b for m in modes for b in entry[m] if b.isdigit()}, key=int)
    rows = ["| mode | " + " | ".join(f"bs {b}" for b in batches) + " |", "|---|" + "---|" * len(batches)]
    for m in modes:
        cells = []
        for b in batches:
            c = entry[m].get(b, {})
            cells.append(f"{c['patches_per_s']:.4g}/s ({c.get('pct_of_peak', '-')} %)" if "patches_per_s" in c
                         else c.get("skipped", entry[m].get("skipped", "-")))
        rows.append(f"| {m} | " + " | ".join(cells) + " |")
    return rows + ["", "patches/s (% of the measured GEMM peak of the same dtype)"]


def served_table(entry: dict[str, Any]) -> list[str]:
    route, inproc, levels = entry.get("route", {}), entry.get("in_process", {}), entry.get("levels", {})
    rows = [f"{route.get('model')} python-torch ({route.get('kind')}, {route.get('precision')}), "
            f"{route.get('image')} images; in-process, same route: {inproc.get('patches_per_s')} patches/s; "
            f"served vs in-process max |dp| {levels.get('max_abs_dprob')}", "",
            "| concurrency | requests | patches/s | images/s | served / in-process | p50 ms | p99 ms |",
            "|---|---|---|---|---|---|---|"]
    for level, row in levels.items():
        if isinstance(row, dict):
            cells = [row.get(k, row.get("skipped", "-")) for k in ("requests", "patches_per_s", "images_per_s",
                                                                    "served_over_in_process", "p50_ms", "p99_ms")]
            rows.append(f"| {level} | " + " | ".join(map(str, cells)) + " |")
    return rows


def plot(check: Check) -> Path:
    """gpu_check.png: encoder patches/s versus batch, one line per mode (and TensorRT engine)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    phases = check.results.get("phases", {})
    series = {**phases.get("encoder", {}), **phases.get("encoder_compile", {})}
    for name, entry in check.results.get("phases", {}).items():
        if name.startswith("tensorrt") and isinstance(entry.get("throughput"), dict):
            series[name] = entry["throughput"]
    for mode, rows in series.items():
        if not isinstance(rows, dict):
            continue
        pts = sorted((int(b), c["patches_per_s"]) for b, c in rows.items() if b.isdigit() and "patches_per_s" in c)
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", label=mode)
    ax.set_xscale("log")
    ax.set_xticks(list(check.sizes.batches), [str(b) for b in check.sizes.batches])
    ax.set(yscale="log", xlabel="patches per call", ylabel="patches / s",
           title=f"{check.sizes.model} patch encoder on {check.results.get('environment', {}).get('gpu', 'CPU')}")
    ax.grid(True, which="both", alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=8)
    path = check.out / "gpu_check.png"
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run(check: Check) -> None:
    """Every phase in priority order; each records itself (and the JSON is rewritten) as it ends."""
    import torch

    import spai

    check.results["environment"] = environment(check)
    with phase(check, "gemm_peak") as entry:
        gemm_peaks(check, entry)
    torch.manual_seed(0)
    model = check.model = spai.create_model(check.sizes.model, device=str(check.device))
    with phase(check, "autocast_parity", 30) as entry:
        autocast_parity(check, model, entry)
    with phase(check, "encoder", 60) as entry:
        encoder_throughput(check, model, MODES[:-1], entry)
    with phase(check, "aggregator", 10) as entry:
        aggregator_case(check, model, entry)
    arts = {}
    for fre in (False, True):
        label = "tensorrt-fre-fp16" if fre else "tensorrt-fp16"
        with phase(check, f"onnx{'-fre-fp16' if fre else ''}", 30) as entry:
            arts[fre] = onnx_export(check, model, fre, entry, arts.get(False))
        with phase(check, label, 150) as entry:
            if fre not in arts:
                raise Skip("its ONNX export did not complete")
            tensorrt_engines(check, arts[fre], label.replace("tensorrt", "trt"), entry)
    with phase(check, "onnxruntime", 30) as entry:
        if False not in arts:
            raise Skip("the ONNX export did not complete")
        ort_cuda(check, arts[False], entry)
    with phase(check, "served", 90) as entry:
        served_throughput(check, model, entry)
    with phase(check, "encoder_compile", 60) as entry:
        encoder_throughput(check, model, MODES[-1:], entry)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("-o", "--output", required=True, help="folder for gpu_check.json / .md / .png")
    parser.add_argument("--dry-run", action="store_true", help="the same code path on the CPU: spai-tiny, tiny sizes")
    parser.add_argument("--budget-s", type=float, default=480, help="time budget; later phases skip when it is spent")
    args = parser.parse_args(argv)
    missing = missing_imports()
    if missing:
        print("error: the GPU check cannot run; missing imports:\n  " + "\n  ".join(missing)
              + "\n(see docs/benchmarks.md, 'GPU check', for the wheels a GPU image without open_clip needs)",
              file=sys.stderr)
        return 2
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("error: torch.cuda.is_available() is False: no CUDA GPU here (use --dry-run to exercise the check on "
              "the CPU).", file=sys.stderr)
        return 2
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    check = Check(out, DRY if args.dry_run else GPU, torch.device("cpu" if args.dry_run else "cuda"), args.budget_s)
    try:
        run(check)
    finally:
        check.results["total_s"] = round(time.perf_counter() - check.started, 1)
        paths = [check.save(), write_markdown(check)]
        with contextlib.suppress(Exception):
            paths.append(plot(check))
        print("wrote " + ", ".join(map(str, paths)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
