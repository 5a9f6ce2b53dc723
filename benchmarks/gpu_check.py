"""One-shot GPU check: ``python benchmarks/gpu_check.py -o DIR`` on a machine with a CUDA GPU, from a plain checkout.

With ``spai-fusion-b16`` (random weights, seeded), phases ordered by value (:data:`PHASES`, the one table that the
run, the plan and docs/benchmarks.md follow): the environment and the GEMM peak (fp32, tf32, fp16, bf16) measured
in the same run; where nvidia-pytriton brings its tritonserver, the served rate (a ``python-torch`` repository of
the model, KIND_GPU, fp16 autocast, on the bundled server: patches/s through the ``spai`` model at concurrency 1,
16 and 64 beside the in-process rate of the same route); fp16 and bf16 autocast parity against fp32 on 256 random
patches (max |dp|, flips; the one comparator, :mod:`spai.infer.parity`); patch-encoder throughput at batch 1, 16, 64,
256 for eager fp32, TF32, fp16, bf16 and CUDA graphs (the step builders of :mod:`benchmarks.backends`), with % of
the measured peak; the aggregator at 16 x 1024; ``torch.compile``; then, only where something reads an ONNX
export: ``spai export``'s ONNX step, where ``tensorrt`` imports the engine builds (with ``--fre-fp16`` and
without: parity, throughput on device inputs, fused attention) and, where onnxruntime has the CUDA provider, ONNX
Runtime on it.

Every phase runs in a child process (spawned once and reused) under a hard deadline: its own cap, never beyond
what is left of ``--budget-s``. A phase past its deadline (a TensorRT build or a ``torch.compile`` is a long C
call no signal interrupts) is killed with every process it started, recorded as "stopped at its deadline (N s)",
and the next phase runs in a fresh child. A phase that fails is recorded with its error; the others still run.
``gpu_check.json``, ``gpu_check.md`` and ``gpu_check.png`` under DIR are rewritten (atomically) after every phase,
so a killed run leaves the phases done so far.

``--plan`` prints the plan (phases in order, each with its deadline, run or skip and why) and measures nothing;
every run prints it first. ``--dry-run`` runs the same code path on the CPU with ``spai-tiny`` and tiny sizes (a
test runs it: < 2 minutes). Missing packages are named exactly (which import failed, which wheel brings it): see
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
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
# --budget-s: a lent GPU machine gives one command 10 minutes (600 s), its start-up counted in the session's time
# apart. Of the 600 s: ~60 s installing the wheels the image lacks and starting Python, ~30 s for this script's own
# start (imports, the plan) and its last reports, ~60 s of margin (killing a phase past its deadline, a fresh phase
# process, the results copied back): 600 - 60 - 30 - 60 = 450 s for the phases.
BUDGET_S = 450.0
SOFT_MARGIN = 0.1  # a phase's own time checks aim this share of its deadline early (2-20 s): partial rows come back
STALL_MARKER = "gpu-check-stall"  # the command line of the test hook's sleeping child


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
    """A run's state: where it writes, what it measured so far; in the phase process also the running phase's
    deadline and the model under test."""

    out: Path
    sizes: Sizes
    device: Any = None  # the torch device in the phase process; None in the parent
    budget_s: float = BUDGET_S
    started: float = field(default_factory=time.monotonic)
    results: dict[str, Any] = field(default_factory=dict)
    deadline: float = float("inf")  # time.monotonic() by which the running phase aims to end (its soft deadline)
    model: Any = None  # the random-weight model under test, on ``device`` (made at first use: model_of)

    def left(self) -> float:
        """Seconds before the running phase's soft deadline (what its own time checks read)."""
        return self.deadline - time.monotonic()

    def budget_left(self) -> float:
        """Seconds of ``budget_s`` not spent yet (the parent's clock)."""
        return self.budget_s - (time.monotonic() - self.started)


class Skip(Exception):  # noqa: N818  (a skip reason, not an error)
    """A phase that cannot run here (no CUDA, no TensorRT, its input missing)."""


def model_of(check: Check) -> Any:
    """The model under test, made (seeded: the same weights in every phase process) at first use."""
    if check.model is None:
        import torch

        import spai

        torch.manual_seed(0)
        check.model = spai.create_model(check.sizes.model, device=str(check.device))
    return check.model
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
    """Versions, the device and its compute capability, TensorRT and ONNX Runtime (its providers) where present."""
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


def environment_phase(check: Check, entry: dict[str, Any]) -> None:
    """The environment, kept at the results' top level (``environment``), not in the phase's entry."""
    check.results["environment"] = environment(check)


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


def autocast_parity(check: Check, entry: dict[str, Any]) -> None:
    """fp16 and bf16 autocast against fp32 (TF32 off) on random patches, through spai.infer.parity: the torch routes
    ``spai predict --device cuda --precision fp16|bf16`` and the python-torch graph models run and gate."""
    from spai.infer.parity import compare_routes
    from spai.infer.routes import runners_for

    model = model_of(check)
    routes = {runners_for("torch", p, model=model, autocast=True).name: p for p in ("fp16", "bf16")}
    with tf32(False), contextlib.ExitStack() as stack:
        entered = [stack.enter_context(runners_for("torch", p, model=model, autocast=True)) for p in routes.values()]
        report = compare_routes(model, entered, n_random=check.sizes.patches)
    for name, result in report.backends.items():
        stats = result["random_patches"]
        entry[f"autocast-{routes[name]}"] = {
            "route": name, "max_abs_dprob": stats["max_abs_dprob"], "flips": stats["decision_flips"],
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
    """``step()`` with TF32 allowed."""
    with tf32(True):
        return step()


def encoder_throughput(check: Check, entry: dict[str, Any], modes: tuple[str, ...]) -> None:
    """Patches/s (and % of the same-dtype GEMM peak) per mode x batch."""
    import torch

    model = model_of(check)
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


def aggregator_case(check: Check, entry: dict[str, Any]) -> None:
    """model.aggregate on images x patches features (fp32, TF32 off)."""
    import torch

    model = model_of(check)
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


# The FP16 encoders an ONNX phase writes, by variant: (fre_fp16, fp32_softmax). "fp16" is spai export's default
# (attention in FP16, the form TensorRT fuses); "fp32-softmax" restores the FP32 softmax islands, so that one run
# compares fused attention with the old form (issue 33); "fre-fp16" also runs the FRE's Linear layers in FP16.
VARIANTS = {"fp16": (False, False), "fre-fp16": (True, False), "fp32-softmax": (False, True)}


def onnx_phase(variant: str) -> str:
    return "onnx" if variant == "fp16" else f"onnx-{variant}"


def onnx_export(check: Check, entry: dict[str, Any], variant: str) -> None:
    """spai export's ONNX step for the model (fp32 graphs, then the mixed-precision encoder of ``variant``, from the
    fp32 graphs of the ``onnx`` phase where it completed)."""
    import copy

    from export.fp16 import fp16_from_onnx
    from export.onnx import onnx_from_torch
    from spai.model.specs import ENCODER_FILES

    out = check.out / onnx_phase(variant)
    out.mkdir(exist_ok=True)
    base = check.results.get("phases", {}).get("onnx", {})
    # traced on the CPU, as `spai export` does; the fp32 graphs are shared by every FP16 variant
    graphs = exported(check, "fp16").graphs if variant != "fp16" and "feature_dim" in base else \
        onnx_from_torch(copy.deepcopy(model_of(check)).cpu(), out)
    fre_fp16, fp32_softmax = VARIANTS[variant]
    fp16 = fp16_from_onnx(graphs.patch_encoder, out / ENCODER_FILES["fp16"], fre_fp16=fre_fp16,
                          fp32_softmax=fp32_softmax)
    entry.update(directory=str(out), patch_encoder=str(graphs.patch_encoder), aggregator=str(graphs.aggregator),
                 feature_dim=int(graphs.feature_dim), patch_encoder_fp16=str(fp16))


def exported(check: Check, variant: str) -> Any:
    """The artifacts of a completed ONNX phase (read from its entry: it may have run in an earlier phase process);
    Skip when it did not complete."""
    from export.onnx import OnnxExport
    from export.pipeline import OnnxArtifacts

    name = onnx_phase(variant)
    entry = check.results.get("phases", {}).get(name, {})
    if "feature_dim" not in entry:
        raise Skip(f"its ONNX export (phase {name}) did not complete")
    graphs = OnnxExport(Path(entry["patch_encoder"]), Path(entry["aggregator"]), int(entry["feature_dim"]))
    fre_fp16, fp32_softmax = VARIANTS[variant]
    return OnnxArtifacts(model_of(check), f"{check.sizes.model} (random weights)", graphs,
                         Path(entry["patch_encoder_fp16"]), fre_fp16, fp32_softmax=fp32_softmax)


def ort_cuda(check: Check, entry: dict[str, Any]) -> None:
    """ONNX Runtime (CUDA provider where this build has it, else the CPU provider in the dry run) on the fp32 and
    fp16 graphs of the ``onnx`` phase."""
    import onnxruntime as ort
    import torch

    from benchmarks.backends import graph_patches
    from spai.infer.runners import OrtRunner
    from spai.model.specs import PATCHES

    art = exported(check, "fp16")
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


def tensorrt_engines(check: Check, entry: dict[str, Any], variant: str) -> None:
    """Build both engines from an ONNX phase's export with spai export's pipeline (engine.json included), gate them
    with the comparator, time them on device inputs and look for fused attention in the layer information."""
    from export.compare import write_report
    from export.pipeline import engine_profiles, engines_from_onnx
    from export.trt import BuildOptions, TrtRunner, engine_layer_information, tensorrt_importable
    from spai.infer.parity import compare_routes
    from spai.infer.runners import Route
    from spai.model.specs import DEFAULT_OPT_BATCH

    if not tensorrt_importable() or check.device.type != "cuda":
        raise Skip("tensorrt does not import here (or no CUDA device): no engine can be built")
    art, label = exported(check, variant), "trt-fp16" if variant == "fp16" else f"trt-{variant}"
    out = check.out / label
    out.mkdir(exist_ok=True)
    profiles = engine_profiles(art.graphs.feature_dim, min_batch=1,
                               opt_batch=min(DEFAULT_OPT_BATCH, check.sizes.engine_max_batch),
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


def served_throughput(check: Check, entry: dict[str, Any]) -> None:
    """The python-torch repository of the model (its weights saved to a checkpoint under DIR/served) on the bundled
    tritonserver: patches/s through the ``spai`` model (``spai score``'s client) per concurrency, beside the
    in-process rate of the same route (the same torch runners through spai.infer.scorer); the server is stopped on
    every path (a phase process killed at its deadline takes it along)."""
    import spai
    from serving.repository import ENTRY, TORCH_VARIANT, build_torch_repository, tuning_with
    from serving.server import TritonServer, describe_repository

    model = model_of(check)
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
    """``n`` paths, cycling through ``images``."""
    return [images[i % len(images)] for i in range(n)]


def in_process_rate(check: Check, model: Any, images: list[Path], precision: str, chunk: int,
                    entry: dict[str, Any]) -> dict[str, float]:
    """Patches/s of the served route in this process (the autocast runner pair, chunks of the ``spai`` model's
    encoder requests) on as many images as the largest concurrency level sends; returns image -> probability."""
    import torch

    from serving.models.torch_graph import torch_runner
    from spai.infer.scorer import Scorer

    with torch_runner(model, "patch_encoder", precision, chunk) as enc, \
            torch_runner(model, "aggregator", precision) as agg:
        scorer = Scorer(enc, agg, spec=model.patch_spec, calibration=model.calibration)
        reference = {s.image: float(s.probability or 0) for s in scorer.score_images(images)}  # also a warm-up
        paths = cycled(images, max(check.sizes.served.values()))
        t0 = time.perf_counter()
        scores = scorer.score_images(paths)
        seconds = time.perf_counter() - t0
    patches = sum(s.num_patches or 0 for s in scores)
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
        patches = sum(r.num_patches or 0 for r in rows)
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



@dataclass(frozen=True)
class Facts:
    """What decides, before anything runs (found cheaply in the parent), which phases can run here."""

    dry_run: bool
    tensorrt: bool  # a real tensorrt imports
    ort_providers: tuple[str, ...]
    served: str  # why no tritonserver can serve here ("" when one can)

    @property
    def engines(self) -> str:
        """Why no TensorRT engine can be built here ("" when one can)."""
        if not self.tensorrt:
            return "tensorrt does not import here: no engine can be built"
        return "no CUDA device in the dry run: no engine is built" if self.dry_run else ""

    @property
    def ort(self) -> str:
        """Why ONNX Runtime is not timed here ("" when it is: the CUDA provider, or the CPU one in the dry run)."""
        if self.dry_run or "CUDAExecutionProvider" in self.ort_providers:
            return ""
        return f"this onnxruntime build has no CUDAExecutionProvider ({', '.join(self.ort_providers)})"


def find_facts(dry_run: bool) -> Facts:
    """TensorRT, ONNX Runtime's providers and a tritonserver to serve with, as this machine has them."""
    import onnxruntime

    from export.trt import tensorrt_importable
    from serving.server import bundled_triton_dir

    lacking = "; ".join(missing_imports(SERVED))
    if not lacking and bundled_triton_dir() is None and not shutil.which("tritonserver"):
        lacking = ("nvidia-pytriton imports but has no bundled tritonserver: "
                   "pip install --force-reinstall nvidia-pytriton")
    served = f"no tritonserver to serve with: {lacking}" if lacking else ""
    return Facts(dry_run, tensorrt_importable(), tuple(onnxruntime.get_available_providers()), served)


def onnx_consumer(facts: Facts) -> str:
    """The ``onnx`` phase runs only for a reader of its export: a TensorRT build or ONNX Runtime."""
    if not facts.engines or not facts.ort:
        return ""
    return f"nothing here reads its export: {facts.engines}; {facts.ort}"


def trt_consumer(reader: str, facts: Facts) -> str:
    """An FP16-variant ONNX phase runs only for its one reader, that variant's TensorRT build (``reader``)."""
    return f"nothing here reads its export (only {reader} does): {facts.engines}" if facts.engines else ""


@dataclass(frozen=True)
class Phase:
    """One row of the ordered phase table (:data:`PHASES`)."""

    name: str
    cap_s: float  # its own deadline; never beyond what is left of the budget
    min_s: float  # not started with less than this left of the budget (it could not finish)
    measure: Callable[[Check, dict[str, Any]], None]  # runs in the phase process and fills the phase's entry
    blocker: Callable[[Facts], str] = lambda facts: ""  # why it cannot run here ("" when it can)


# The phases, ordered by value: what run() runs, what the plan prints and what docs/benchmarks.md lists (a test
# holds the docs to it), in this order. Caps: what the phase needs on an H100 with room (first CUDA use and a phase
# process start included), far beyond its usual time; the budget cuts the later ones.
PHASES = (
    Phase("environment", 90, 10, environment_phase),
    Phase("gemm_peak", 60, 10, gemm_peaks),
    Phase("served", 180, 60, served_throughput, lambda facts: facts.served),
    Phase("autocast_parity", 60, 20, autocast_parity),
    Phase("encoder", 120, 30, partial(encoder_throughput, modes=MODES[:-1])),
    Phase("aggregator", 30, 10, aggregator_case),
    Phase("encoder_compile", 180, 60, partial(encoder_throughput, modes=MODES[-1:])),
    Phase("onnx", 120, 30, partial(onnx_export, variant="fp16"), onnx_consumer),
    Phase("tensorrt-fp16", 300, 120, partial(tensorrt_engines, variant="fp16"), lambda facts: facts.engines),
    Phase("onnxruntime", 60, 20, ort_cuda, lambda facts: facts.ort),
    Phase("onnx-fp32-softmax", 90, 30, partial(onnx_export, variant="fp32-softmax"),
          partial(trt_consumer, "tensorrt-fp32-softmax")),
    Phase("tensorrt-fp32-softmax", 300, 120, partial(tensorrt_engines, variant="fp32-softmax"),
          lambda facts: facts.engines),
    Phase("onnx-fre-fp16", 90, 30, partial(onnx_export, variant="fre-fp16"),
          partial(trt_consumer, "tensorrt-fre-fp16")),
    Phase("tensorrt-fre-fp16", 300, 120, partial(tensorrt_engines, variant="fre-fp16"), lambda facts: facts.engines),
)
PHASE_BY_NAME = {p.name: p for p in PHASES}


@dataclass(frozen=True)
class Planned:
    """A phase as this run plans it: its cap and floor, or why it is skipped."""

    phase: Phase
    cap_s: float
    min_s: float
    skip: str  # "" when it runs

    def row(self) -> dict[str, Any]:
        """Its line of the results' ``plan``."""
        return {"phase": self.phase.name, "cap_s": self.cap_s, "runs": not self.skip, "why": self.skip}


def plan(facts: Facts, only: frozenset[str] = frozenset(), stall: dict[str, float] | None = None) -> list[Planned]:
    """Every phase of :data:`PHASES` in order: its cap, or why it is skipped (``only``: the phases to run besides
    ``environment``; ``stall``: the test hook's phase -> its cap)."""
    stall = stall or {}
    rows = []
    for p in PHASES:
        skip = p.blocker(facts)
        if only and p.name not in only and p.name != "environment":
            skip = "not selected (--only)"
        cap = stall.get(p.name, p.cap_s)
        rows.append(Planned(p, cap, 0.0 if p.name in stall else p.min_s, skip))
    return rows


def format_plan(rows: list[Planned], sizes: Sizes, budget_s: float, dry_run: bool) -> str:
    """The plan as printed: one line per phase, in order, its deadline, run or skip and why."""
    where = "the CPU (dry run)" if dry_run else "CUDA"
    lines = [f"plan: {sizes.model} on {where}, budget {budget_s:.0f} s; each phase is stopped at its deadline (its "
             "cap, or what is left of the budget if less) and skipped with less left than its floor"]
    for i, r in enumerate(rows, 1):
        what = f"skip: {r.skip}" if r.skip else f"run (floor {r.min_s:.0f} s)"
        lines.append(f"  {i:2d}. {r.phase.name:<18} deadline <= {r.cap_s:3.0f} s  {what}")
    return "\n".join(lines)


def kill_tree(pid: int) -> None:
    """SIGKILL a process and every process under it (a tritonserver and its stubs, compile workers; collected
    first: once it is dead they are orphans)."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            proc.kill()
    psutil.wait_procs(procs, timeout=10)
    # the Python-backend regions of a tritonserver it started (serving.server.TritonServer's shm prefix)
    for path in glob.glob(f"/dev/shm/spai_{pid}_*"):
        with contextlib.suppress(OSError):
            os.remove(path)


class PhaseProcess:
    """The child process (spawn context) the phases run in: started at first use and kept; killed with every
    process it started when a phase passes its deadline (or it dies), and started afresh for the next phase."""

    def __init__(self, out: Path, dry_run: bool, stall: str) -> None:
        """Nothing starts yet (``stall``: the test hook's phase, or "")."""
        self.args = (str(out), dry_run, stall)
        self.proc: Any = None
        self.conn: Any = None

    def run(self, name: str, results: dict[str, Any], seconds: float) -> tuple[dict[str, Any], dict[str, Any]]:
        """Phase ``name`` there, given ``seconds``: its entry and the results' top-level updates, or an entry saying
        it was stopped at its deadline or its process died."""
        if self.proc is None or not self.proc.is_alive():
            self.stop()
            self.start()
        self.conn.send((name, results, seconds))
        if self.conn.poll(seconds):
            with contextlib.suppress(EOFError, OSError):
                entry, updates = self.conn.recv()
                return entry, updates
            return {"error": f"its process died (exit code {self.stop()})"}, {}
        self.stop()
        return {"stopped": f"stopped at its deadline ({seconds:.0f} s)"}, {}

    def start(self) -> None:
        """Spawn the phase process (a fresh interpreter: nothing of this one's state, no inherited CUDA)."""
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=phase_process, args=(child, *self.args), name="gpu-check-phases")
        self.proc.start()
        child.close()  # the process's death then reads as EOF here

    def stop(self) -> int | None:
        """Kill the process and everything it started; its exit code (None if there was none)."""
        if self.proc is None:
            return None
        kill_tree(self.proc.pid)
        self.proc.join(10)
        code = self.proc.exitcode
        self.conn.close()
        self.proc = self.conn = None
        return code

    def __enter__(self) -> PhaseProcess:
        """Itself; on leaving, the process ends (at once after an exception)."""
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        """Let an idle process end its loop, then kill whatever is left."""
        if exc_type is None and self.proc is not None and self.proc.is_alive():
            with contextlib.suppress(OSError):
                self.conn.send(None)  # ends its loop; killed anyway below if it does not end
            self.proc.join(10)
        self.stop()  # on an exception (SIGTERM, Ctrl-C) at once


def phase_process(conn: Any, out: str, dry_run: bool, stall: str) -> None:
    """The phase process's loop: (phase, results so far, seconds) in, (its entry, top-level updates) out."""
    die_with_parent()
    import torch

    check = Check(Path(out), DRY if dry_run else GPU, torch.device("cpu" if dry_run else "cuda"))
    while True:
        try:
            request = conn.recv()
        except EOFError:
            return
        if request is None:
            return
        name, check.results, seconds = request
        check.deadline = time.monotonic() + seconds - min(20.0, max(2.0, SOFT_MARGIN * seconds))
        entry = measure(check, name, stall)
        updates = {k: v for k, v in check.results.items() if k != "phases"}
        conn.send(json.loads(json.dumps([entry, updates], default=str)))  # plain data only


def die_with_parent() -> None:
    """Linux: this process gets SIGKILL when the parent dies (a killed check leaves no phase running)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def measure(check: Check, name: str, stall: str) -> dict[str, Any]:
    """Phase ``name`` in this process: its entry, or why it was skipped, or what failed."""
    entry: dict[str, Any] = {}
    try:
        if name == stall:
            stall_past_deadline(check)
        PHASE_BY_NAME[name].measure(check, entry)
    except Skip as s:
        entry["skipped"] = str(s)
    except Exception as e:  # recorded, never lost: the next phase still runs
        entry["error"] = f"{type(e).__name__}: {e}"
        entry["traceback"] = traceback.format_exc(limit=6)
    return entry


def stall_past_deadline(check: Check) -> None:
    """The test hook's phase (``--test-stall``): a sleeping child process, then this process blocked and deaf to
    SIGTERM and SIGINT, as in a long C call (a TensorRT build, a ``torch.compile``)."""
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", f"{STALL_MARKER}:{check.out}"])
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    time.sleep(3600)


def write_text(path: Path, text: str) -> Path:
    """``text`` to ``path`` atomically."""
    from spai.files import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path


def write_reports(check: Check, replot: bool = True) -> list[Path]:
    """gpu_check.json, .md and .png, each written atomically: a kill leaves those of the phases done so far (the
    plot is redrawn with ``replot`` or where there is none yet)."""
    check.results["total_s"] = round(time.monotonic() - check.started, 1)
    paths = [write_text(check.out / "gpu_check.json", json.dumps(check.results, indent=2, default=str)),
             write_text(check.out / "gpu_check.md", markdown(check))]
    if not replot and (check.out / "gpu_check.png").is_file():
        return [*paths, check.out / "gpu_check.png"]
    try:
        paths.append(plot(check))
    except Exception as e:  # a plot is worth less than the next phase
        print(f"no plot: {type(e).__name__}: {e}", file=sys.stderr)
    return paths


def outcome(entry: dict[str, Any] | None) -> str:
    """A phase's status word: done, skipped, stopped, error, or not reached."""
    if entry is None:
        return "not reached"
    return next((k for k in ("stopped", "error", "skipped") if k in entry), "done")


def markdown(check: Check) -> str:
    """gpu_check.md: the plan with each phase's status, then every phase with the numbers of the JSON."""
    r, phases = check.results, check.results.get("phases", {})
    lines = ["# spai GPU check", "", "| key | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in r.get("environment", {}).items()]
    lines += ["", "| # | phase | deadline s | status | s |", "|---|---|---|---|---|"]
    for i, row in enumerate(r.get("plan", []), 1):
        entry = phases.get(row["phase"])
        deadline = (entry or {}).get("deadline_s", row["cap_s"] if row["runs"] else None)
        lines.append(f"| {i} | {row['phase']} | {'-' if deadline is None else f'{deadline:.0f}'} | "
                     f"{outcome(entry)} | {entry.get('seconds', '-') if entry else '-'} |")
    for name, entry in phases.items():
        kind = outcome(entry)
        if name == "environment" and kind == "done":
            continue
        lines += ["", f"## {name} ({entry.get('seconds', 0)} s)", ""]
        if kind != "done":
            lines.append(f"**{kind}**: {entry[kind]}")
        elif name.startswith("encoder"):
            lines += encoder_table(entry)
        elif name == "served":
            lines += served_table(entry)
        else:
            lines += ["```json", json.dumps({k: v for k, v in entry.items() if k not in ("seconds", "deadline_s")},
                                            indent=1, default=str)[:4000], "```"]
    end = "" if r.get("complete") else " so far (the run has not ended, or was killed: the phases above are done)"
    return "\n".join([*lines, "", f"Total: {time.monotonic() - check.started:.0f} s{end}"]) + "\n"


def encoder_table(entry: dict[str, Any]) -> list[str]:
    """An encoder phase's modes x batches: patches/s and % of peak."""
    modes = [m for m in entry if isinstance(entry[m], dict)]
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
    """The served phase: its route, the in-process rate, one row per concurrency level."""
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

    from spai.files import atomic_path

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    phases = check.results.get("phases", {})
    series = {**phases.get("encoder", {}), **phases.get("encoder_compile", {})}
    for name, entry in phases.items():
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
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return path


def run(check: Check, rows: list[Planned], phases: PhaseProcess) -> None:
    """Every planned phase in order, each in the phase process under its deadline; the reports after each."""
    check.results["phases"] = {}
    for row in rows:
        t0 = time.monotonic()
        entry, updates = attempt(check, row, phases)
        entry["seconds"] = round(time.monotonic() - t0, 2)
        check.results.update(updates)
        check.results["phases"][row.phase.name] = entry
        kind = outcome(entry)
        print(f"[{time.monotonic() - check.started:6.1f}s] {row.phase.name}: "
              f"{entry[kind].splitlines()[0] if kind != 'done' else 'done'}", flush=True)
        write_reports(check, replot=not row.skip)  # a phase the plan skips draws nothing new


def attempt(check: Check, row: Planned, phases: PhaseProcess) -> tuple[dict[str, Any], dict[str, Any]]:
    """One planned phase: skipped (the plan's reason, or too little budget left), or run with its deadline."""
    if row.skip:
        return {"skipped": row.skip}, {}
    left = check.budget_left()
    if left < row.min_s or left <= 0:
        return {"skipped": f"time budget: {left:.0f} s left, this phase needs at least {row.min_s:.0f} s"}, {}
    seconds = min(row.cap_s, left)
    entry, updates = phases.run(row.phase.name, check.results, seconds)
    entry["deadline_s"] = round(seconds, 1)
    return entry, updates


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line (``--test-stall`` is the tests' hook, not shown in --help)."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("-o", "--output", help="folder for gpu_check.json / .md / .png (not needed with --plan)")
    parser.add_argument("--dry-run", action="store_true", help="the same code path on the CPU: spai-tiny, tiny sizes")
    parser.add_argument("--plan", action="store_true", help="print the plan (phases, deadlines, run or skip and why) "
                        "and measure nothing")
    parser.add_argument("--budget-s", type=float, default=BUDGET_S, help="seconds for all phases (default: "
                        "%(default).0f, what 10 minutes of a lent GPU machine leave); no phase runs past it")
    parser.add_argument("--only", default="", help="comma-separated phases to run (environment always runs)")
    parser.add_argument("--test-stall", action="append", default=[], help=argparse.SUPPRESS)  # NAME=SECONDS
    args = parser.parse_args(argv)
    args.only = frozenset(filter(None, args.only.split(",")))
    args.stall = {name: float(s) for name, _, s in (x.partition("=") for x in args.test_stall)}
    unknown = sorted((args.only | set(args.stall)) - set(PHASE_BY_NAME))
    if unknown:
        parser.error(f"unknown phase(s) {', '.join(unknown)}; the phases: {', '.join(PHASE_BY_NAME)}")
    if not args.plan and not args.output:
        parser.error("-o/--output is required (except with --plan)")
    return args


def main(argv: list[str] | None = None) -> int:
    """Check the imports, print the plan, run it (unless --plan); 2 when the check cannot run here."""
    args = parse_args(argv)
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
    sizes = DRY if args.dry_run else GPU
    rows = plan(find_facts(args.dry_run), args.only, args.stall)
    print(format_plan(rows, sizes, args.budget_s, args.dry_run), flush=True)
    if args.plan:
        return 0
    check = Check(Path(args.output), sizes, budget_s=args.budget_s)
    check.out.mkdir(parents=True, exist_ok=True)
    check.results.update(budget_s=args.budget_s, plan=[r.row() for r in rows], complete=False)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))  # the finally blocks still run
    stall = next(iter(args.stall), "")
    try:
        with PhaseProcess(check.out, args.dry_run, stall) as phases:
            run(check, rows, phases)
        check.results["complete"] = True
    finally:
        print("wrote " + ", ".join(map(str, write_reports(check))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
