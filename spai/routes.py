"""CPU routes: which (backend, precision) scores a checkpoint on this CPU, chosen by evidence.

A route is a pair of runners (:class:`spai.runners.Route`): ``torch-fp32`` (the reference), ``torch-bf16``,
``ort-fp32`` and ``ort-int8``. Whether a reduced-precision route computes the model's scores depends on the
checkpoint (trained weights put logits where bf16 rounding moves them) and on the CPU (ONNX Runtime's int8 kernels
differ between VNNI and AVX2), so ``--precision auto`` takes the fastest route **that passed its parity gate for
this checkpoint on this CPU**:

1. the candidates, in the first-guess order of the CPU's flags (:func:`cpu_routes`);
2. each candidate's gate verdict (:func:`spai.parity.compare_routes` against torch fp32), read from the route
   evidence of this model (:class:`RouteEvidence`: ``route_evidence.json`` in an export folder, written by
   ``spai export``, or in the cache), and run once where it is missing;
3. each passed candidate's speed on this machine (a short probe, kept with the CPU it ran on);
4. the fastest passed route, with a line saying which route was taken and why the faster ones were passed over.

A failed route is never taken. ``SPAI_CPU_FLAGS`` overrides the CPU's flags (tests run the AMX, VNNI and AVX2
orderings on one machine); ``SPAI_CACHE_DIR`` moves the cache (default ``~/.cache/spai``).

A model on a CUDA GPU has its own routes (:data:`GPU_ROUTES`): ``torch-fp32`` and the encoder under
``torch.autocast`` in ``torch-bf16`` / ``torch-fp16``, gated the same way, their evidence kept per GPU
(:func:`device_identity`); one asked for by name runs only where it passed (:func:`require_passed`).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from spai.errors import ConfigError
from spai.files import atomic_path, sha256_file
from spai.runners import (
    CPU_CHUNKS,
    Limits,
    OrtRunner,
    Route,
    ScoringModel,
    TorchRunner,
)
from spai.specs import AGGREGATOR_FILE, ENCODER_FILES, EVIDENCE_FILE, PATCHES, PATCHES_INPUT

BACKENDS = ("torch", "ort")
PRECISIONS = ("fp32", "bf16", "int8")
ROUTES = (("torch", "fp32"), ("torch", "bf16"), ("ort", "fp32"), ("ort", "int8"))  # a CPU's
# A CUDA GPU's, in the order to try them: the encoder under torch.autocast (bf16 first: fp32's exponent range),
# then the reference. TensorRT's fp16 engines are served by Triton (`spai export`).
GPU_ROUTES = (("torch", "bf16"), ("torch", "fp16"), ("torch", "fp32"))
GPU_PRECISIONS = ("fp32", "fp16", "bf16")
# The graph files each ONNX Runtime route runs: its verdicts hold while these files are the ones it was gated on.
ROUTE_GRAPHS = {f"ort-{p}": (ENCODER_FILES[p], AGGREGATOR_FILE) for p in ("fp32", "int8")}
FLAGS_VARIABLE, CACHE_VARIABLE = "SPAI_CPU_FLAGS", "SPAI_CACHE_DIR"
EVIDENCE_FORMAT = 1
# The flags that decide the kernels of our routes: a CPU is known by its model name and these.
KERNEL_FLAGS = ("amx_bf16", "amx_int8", "avx512_bf16", "avx512_vnni", "avx_vnni", "avx512f", "avx2")
GATE_PATCHES = 64  # random patches of a route's one-time gate (64 make 15 pseudo-images of 1..8 patches)
GATE_MAX_PIXELS = 1_000_000  # the project's generated images up to this size join the gate
PROBE_PATCHES = 4  # patches a speed probe encodes after one warm-up call

Say = Callable[[str], None]


def route_name(backend: str, precision: str, autocast_on_cpu: bool = False) -> str:
    """``torch-bf16``, ``ort-int8``, ...; a GPU route run under CPU autocast (tests) is ``torch-bf16-autocast``."""
    return f"{backend}-{precision}" + ("-autocast" if autocast_on_cpu else "")


def on_gpu(model: ScoringModel | None) -> bool:
    """True where ``model`` lives on a GPU (its routes are :data:`GPU_ROUTES`)."""
    return model is not None and getattr(model.device, "type", "cpu") != "cpu"


def device_identity(model: ScoringModel | None, flags: frozenset[str] | None = None) -> str:
    """How route evidence names the device a model scores on: its GPU (name, compute capability, torch and CUDA
    versions: the kernels autocast picks) or this CPU (:func:`cpu_identity`)."""
    if not on_gpu(model):
        return cpu_identity(cpu_flags() if flags is None else flags)
    import torch

    props = torch.cuda.get_device_properties(model.device)
    return f"{props.name} [sm_{props.major}{props.minor}, torch {torch.__version__}, CUDA {torch.version.cuda}]"


def resolve_gpu_route(backend: str | None, precision: str) -> tuple[str, str]:
    """(backend, precision) of a route asked for by name for a model on a GPU: torch fp32, fp16 or bf16
    (:class:`ConfigError` saying what to use instead otherwise)."""
    if backend not in (None, "auto", "torch"):
        raise ConfigError(f"on a GPU spai scores in-process with PyTorch; --backend {backend} is a CPU route: drop "
                          "--backend (or pass --device cpu). A GPU's TensorRT engines are served by Triton.")
    if precision not in GPU_PRECISIONS:
        raise ConfigError(f"--precision {precision} is a CPU precision; on a GPU choose one of "
                          f"{', '.join(GPU_PRECISIONS)} or auto (or pass --device cpu).")
    return "torch", precision


def cpu_flags() -> frozenset[str]:
    """This CPU's feature flags (``/proc/cpuinfo``; empty where it cannot be read), or ``$SPAI_CPU_FLAGS``
    (comma- or space-separated) where set."""
    override = os.environ.get(FLAGS_VARIABLE)
    if override is not None:
        return frozenset(override.replace(",", " ").split())
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_model_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or the platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_identity(flags: frozenset[str]) -> str:
    """How route evidence names a CPU: its model and the flags that pick our kernels."""
    return f"{cpu_model_name()} [{' '.join(f for f in KERNEL_FLAGS if f in flags) or 'no SIMD flags'}]"


def has_bf16(flags: frozenset[str]) -> bool:
    """Native bf16 dot products (AVX-512 BF16 or AMX): bf16 GEMMs at about twice the fp32 rate."""
    return bool({"avx512_bf16", "amx_bf16"} & flags)


def has_vnni(flags: frozenset[str]) -> bool:
    """Native int8 dot products (AVX-512 VNNI, AVX-VNNI or AMX-INT8): ONNX Runtime's u8s8 GEMMs without the
    saturating AVX2 fallback."""
    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & flags)


def cpu_routes(flags: frozenset[str] | None = None) -> list[tuple[str, str]]:
    """The routes worth running on this CPU, in the order to try them (the first guess of ``auto``).

    From our measurements (``benchmarks/``): with AMX, bf16 GEMMs through oneDNN reach about 5x the fp32 rate, so
    torch bf16 leads; with VNNI (AMD EPYC / Intel without AMX), ORT int8 GEMMs reach about 3.6x the fp32 rate
    and bf16 about 2.2x, so int8 leads; otherwise fp32, ONNX Runtime (MLAS) before torch. Without VNNI int8 still
    runs (about 1.6x ORT fp32 on AVX2), but its accuracy is the CPU's: the gate decides.
    """
    flags = cpu_flags() if flags is None else flags
    routes = [("torch", "bf16")] if "amx_bf16" in flags else []
    routes += [("ort", "int8")] if has_vnni(flags) else []
    routes += [("torch", "bf16")] if has_bf16(flags) and "amx_bf16" not in flags else []
    routes += [("ort", "fp32")] + ([] if has_vnni(flags) else [("ort", "int8")])
    return routes + [("torch", "fp32")]


def resolve_route(backend: str | None, precision: str, flags: frozenset[str] | None = None) -> tuple[str, str]:
    """(backend, precision) of an explicit request: ``precision`` fp32 | bf16 | int8, ``backend`` torch | ort |
    None (from the precision). :class:`ConfigError` with what to use instead for a route that does not exist or
    would be slow. ``auto`` is :func:`choose_route`'s (it needs the model)."""
    flags = cpu_flags() if flags is None else flags
    if backend not in (None, "auto", *BACKENDS):
        raise ConfigError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}.")
    backend = None if backend == "auto" else backend
    if precision == "fp16":
        raise ConfigError("fp16 is the GPU (TensorRT) precision; on a CPU use --precision bf16 or int8.")
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)} or auto.")
    backend = backend or ("ort" if precision == "int8" else "torch")
    if (backend, precision) == ("ort", "bf16"):
        raise ConfigError("ONNX Runtime's CPU provider has no bf16 GEMMs; use --backend torch --precision bf16, "
                          "or --backend ort --precision int8.")
    if (backend, precision) == ("torch", "int8"):
        raise ConfigError("int8 runs through ONNX Runtime: use --backend ort --precision int8 (or torch with bf16).")
    if precision == "bf16" and not has_bf16(flags):
        raise ConfigError("this CPU has neither AVX-512 BF16 nor AMX, so bf16 would be emulated and slower than "
                          f"fp32; use {' or '.join(f'{b} {p}' for b, p in cpu_routes(flags)[:2])} instead.")
    return backend, precision


def runners_for(backend: str, precision: str, *, model: ScoringModel | None = None,
                onnx_dir: str | os.PathLike | None = None, chunk: int | None = None,
                threads: int | None = None, autocast: bool | None = None) -> Route:
    """The :class:`Route` of one route, by name. torch needs ``model``; ort needs ``onnx_dir`` (a ``spai export``
    folder: ``patch_encoder[.int8].onnx`` + ``aggregator.onnx``). ``chunk``: patches per encoder call (default
    :data:`spai.runners.CPU_CHUNKS` on a CPU, the model's chunk on a GPU). The aggregator runs in fp32. A model on
    a GPU runs :data:`GPU_ROUTES` (fp16 / bf16 under autocast); ``autocast=True`` runs those on a CPU (tests)."""
    if backend == "torch" and precision in ("fp16", "bf16") and (on_gpu(model) or autocast):
        return _torch_route(model, precision, chunk, autocast=True)
    if (backend, precision) not in ROUTES:
        resolve_route(backend, precision, frozenset({"avx512_bf16"}))  # raises the explanatory error
        raise ConfigError(f"no {backend} {precision} route; routes: {', '.join(f'{b} {p}' for b, p in ROUTES)}.")
    if backend == "torch":
        return _torch_route(model, precision, chunk)
    if onnx_dir is None:
        raise ConfigError("the ort backend needs the exported graphs: pass the folder `spai export` wrote.")
    folder = Path(onnx_dir)
    limits: Limits = {PATCHES: (chunk or CPU_CHUNKS[(backend, precision)], *PATCHES_INPUT.shape)}
    return Route(route_name(backend, precision), precision,
                 OrtRunner(folder / ENCODER_FILES[precision], threads=threads, limits=limits),
                 OrtRunner(folder / AGGREGATOR_FILE, threads=threads))


def _torch_route(model: ScoringModel | None, precision: str, chunk: int | None, autocast: bool = False) -> Route:
    if model is None:
        raise ConfigError("the torch backend needs a model (spai.create_model(...)).")
    gpu = on_gpu(model)
    batch = chunk or (None if gpu else CPU_CHUNKS.get(("torch", precision), CPU_CHUNKS[("torch", "bf16")]))
    name = route_name("torch", precision, autocast_on_cpu=autocast and not gpu)
    return Route(name, precision, TorchRunner(model, "patch_encoder", batch, precision, autocast=autocast or None),
                 TorchRunner(model, "aggregator"))


# --- Evidence: gate verdicts and speeds, per model and per CPU ------------------------------------------------------

def model_fingerprint(model: ScoringModel) -> str:
    """SHA-256 of the model's weights (names, shapes, dtypes, bytes) and calibration: what route evidence belongs
    to, whichever file (or none) the weights came from."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        array = tensor.detach().cpu().contiguous().numpy()
        digest.update(f"{name}:{array.dtype}:{array.shape};".encode())
        digest.update(memoryview(array).cast("B"))
    digest.update(json.dumps(model.calibration.to_entry(), sort_keys=True).encode())
    return digest.hexdigest()


def cache_dir() -> Path:
    """Where evidence and auto's exports are kept: ``$SPAI_CACHE_DIR``, else ``$XDG_CACHE_HOME/spai``."""
    if os.environ.get(CACHE_VARIABLE):
        return Path(os.environ[CACHE_VARIABLE])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "spai"


@dataclass
class RouteEvidence:
    """Gate verdicts and measured speeds of one model's routes, per CPU (:func:`cpu_identity`), as JSON at
    :attr:`path`. ``checkpoint_sha256``: the checkpoint file's hash where one was exported."""

    path: Path
    fingerprint: str
    checkpoint_sha256: str = ""
    cpus: dict[str, dict[str, Any]] = field(default_factory=dict)
    graphs: dict[str, dict[str, Any]] = field(default_factory=dict)  # ONNX file -> sha256, size, mtime_ns
    bf16_fp32_layers: list[str] | None = None  # what torch-bf16 kept in fp32 when its verdicts were measured

    @classmethod
    def load(cls, path: Path, fingerprint: str | None) -> RouteEvidence:
        """The evidence at ``path`` if it is this model's (another model's or an unreadable file: none yet;
        ``fingerprint`` None: whichever model's it is, for readers that hold only the graphs). ONNX Runtime
        verdicts and speeds of graphs that changed since they were measured are dropped (:func:`changed_graphs`)."""
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return cls(path, fingerprint or "")
        if data.get("format") != EVIDENCE_FORMAT or fingerprint not in (None, data.get("weights_sha256")):
            return cls(path, fingerprint or "")
        evidence = cls(path, str(data.get("weights_sha256", "")), str(data.get("checkpoint_sha256", "")),
                       dict(data.get("cpus") or {}), dict(data.get("graphs") or {}), data.get("bf16_fp32_layers"))
        changed = changed_graphs(path.parent, evidence.graphs) if path.name == EVIDENCE_FILE else set()
        for cpu in evidence.cpus.values():
            for kind in ("verdicts", "speeds"):
                for route in [r for r in cpu.get(kind, {}) if changed & set(ROUTE_GRAPHS.get(r, ()))]:
                    del cpu[kind][route]
        return evidence

    def cpu(self, identity: str) -> dict[str, Any]:
        return self.cpus.setdefault(identity, {"verdicts": {}, "speeds": {}})

    def verdict(self, identity: str, route: str) -> dict[str, Any] | None:
        return self.cpus.get(identity, {}).get("verdicts", {}).get(route)

    def passed(self, identity: str, route: str) -> bool:
        """True where ``route`` has a verdict on this CPU and it passed."""
        verdict = self.verdict(identity, route)
        return bool(verdict and verdict["passed"])

    def speed(self, identity: str, route: str) -> float | None:
        entry = self.cpus.get(identity, {}).get("speeds", {}).get(route)
        return None if entry is None else float(entry["patches_per_s"])

    def save(self) -> Path:
        data = {"format": EVIDENCE_FORMAT, "weights_sha256": self.fingerprint,
                "checkpoint_sha256": self.checkpoint_sha256, "graphs": self.graphs,
                "bf16_fp32_layers": self.bf16_fp32_layers, "cpus": self.cpus}
        with atomic_path(self.path) as tmp:
            tmp.write_text(json.dumps(data, indent=2) + "\n")
        return self.path


def graph_records(folder: Path, known: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """SHA-256, size and mtime of each ONNX graph in ``folder``, so that a verdict is known to be about these
    files (re-hashed only where size or mtime differ from ``known``)."""
    records: dict[str, dict[str, Any]] = {}
    for name in sorted({f for files in ROUTE_GRAPHS.values() for f in files}):
        path = folder / name
        if not path.is_file():
            continue
        stat = path.stat()
        old = (known or {}).get(name)
        if old and (old.get("size"), old.get("mtime_ns")) == (stat.st_size, stat.st_mtime_ns):
            records[name] = old
        else:
            records[name] = {"sha256": sha256_file(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    return records


def changed_graphs(folder: Path, recorded: dict[str, dict[str, Any]]) -> set[str]:
    """The graph files whose ONNX Runtime verdicts no longer hold: changed or gone since ``recorded``, or present
    and never recorded (evidence written without the graphs' hashes)."""
    now = graph_records(folder, recorded)
    return {name for name in {*now, *recorded}
            if now.get(name, {}).get("sha256") != recorded.get(name, {}).get("sha256")}


def evidence_for(model: ScoringModel, onnx_dir: str | os.PathLike | None = None) -> RouteEvidence:
    """The route evidence of ``model``: the export folder's where given (``spai export`` writes it), else the
    cache's."""
    fingerprint = model_fingerprint(model)
    path = Path(onnx_dir) / EVIDENCE_FILE if onnx_dir else cache_dir() / "routes" / f"{fingerprint[:24]}.json"
    evidence = RouteEvidence.load(path, fingerprint)
    _hold_bf16_rule(evidence, model)
    return evidence


def _hold_bf16_rule(evidence: RouteEvidence, model: ScoringModel) -> None:
    """torch-bf16's verdicts and speeds hold while the route keeps the same layers in fp32 as when they were
    measured (:func:`spai.models.precision.bf16_fp32_layers`); measured with others, they are dropped (gated again)."""
    torch = sys.modules.get("torch")  # a torch model means torch is imported; an ORT-only install has none
    if torch is None or not isinstance(model, torch.nn.Module):
        return
    from spai.models.precision import bf16_fp32_layers

    try:
        rule = sorted(bf16_fp32_layers(model))
    except ConfigError:  # no SPAI backbone: no bf16 route to hold verdicts for
        return
    if evidence.bf16_fp32_layers != rule:
        for cpu in evidence.cpus.values():
            for kind in ("verdicts", "speeds"):
                cpu.get(kind, {}).pop(route_name("torch", "bf16"), None)
        evidence.bf16_fp32_layers = rule


def record_verdicts(evidence: RouteEvidence, report: Any, identity: str) -> None:
    """Keep each route's verdict of a :class:`spai.parity.ParityReport` (max |dp|, flips, AUC delta per set)."""
    verdicts = evidence.cpu(identity)["verdicts"]
    if evidence.path.name == EVIDENCE_FILE:  # beside the graphs the ONNX Runtime verdicts were measured on
        evidence.graphs = graph_records(evidence.path.parent, evidence.graphs)
    for name, entry in report.backends.items():
        failures = [f for f in report.failures if f.startswith(f"{name}/")]
        sets = {k: {s: entry[k].get(s) for s in ("n", "max_abs_dprob", "decision_flips", "auc_delta")}
                for k in ("random_patches", "images") if k in entry}
        verdicts[name] = {"passed": not failures, "failures": failures, **sets,
                          "date": datetime.date.today().isoformat()}


def gate_routes(model: ScoringModel, routes: Sequence[Route], say: Say) -> Any:
    """Gate entered ``routes`` against torch fp32 as ``spai export --precision`` does, smaller: random patches and
    the project's generated images up to :data:`GATE_MAX_PIXELS` (a route's gate runs once per model and device)."""
    from spai.data.samples import write_sample_images
    from spai.images import decode_image
    from spai.parity import compare_routes

    with tempfile.TemporaryDirectory() as folder:
        images = [p for p in write_sample_images(Path(folder))
                  if np.prod(decode_image(p).shape[:2]) <= GATE_MAX_PIXELS]
        say(f"gating {', '.join(r.name for r in routes)} for this model on this device "
            f"({GATE_PATCHES} random patches, {len(images)} images; once, then kept) ...")
        return compare_routes(model, routes, image_paths=images, n_random=GATE_PATCHES)


def probe_speed(route: Route) -> float:
    """Patches/s of an entered route's encoder on this machine: one warm-up call, then :data:`PROBE_PATCHES`."""
    encoder = route.encoder
    step = encoder.max_dim(PATCHES) or PROBE_PATCHES
    rng = np.random.default_rng(0)
    feed = {PATCHES: rng.integers(0, 256, (min(step, PROBE_PATCHES), *PATCHES_INPUT.shape), dtype=np.uint8)}
    if encoder.input_dtype(PATCHES) != np.uint8:
        feed = {PATCHES: (feed[PATCHES] / 255).astype(encoder.input_dtype(PATCHES))}
    encoder.infer(feed)
    start, done = time.perf_counter(), 0
    while done < PROBE_PATCHES:
        encoder.infer(feed)
        done += len(feed[PATCHES])
    return done / (time.perf_counter() - start)


# --- auto: the fastest route that passed -----------------------------------------------------------------------------

@dataclass(frozen=True)
class RouteChoice:
    """What ``auto`` took, and why (one line per route it passed over)."""

    backend: str
    precision: str
    reason: str

    @property
    def name(self) -> str:
        return route_name(self.backend, self.precision)


def _has_graphs(onnx_dir: str | os.PathLike | None, precision: str) -> bool:
    folder = Path(onnx_dir) if onnx_dir else None
    return folder is not None and (folder / ENCODER_FILES[precision]).is_file() and (folder / AGGREGATOR_FILE).is_file()


def choose_route(model: ScoringModel, *, onnx_dir: str | os.PathLike | None = None, backend: str | None = None,
                 flags: frozenset[str] | None = None, say: Say = lambda _line: None) -> RouteChoice:
    """The fastest route for this CPU (or the model's GPU) that passed its parity gate for ``model`` (module
    docstring): verdicts and speeds come from the model's evidence, and what is missing is measured once and kept.
    ONNX Runtime routes are candidates where ``onnx_dir`` holds their graphs. ``backend`` limits the candidates to
    one backend."""
    flags = cpu_flags() if flags is None else flags
    identity = device_identity(model, flags)
    backend = None if backend == "auto" else backend
    routes = list(GPU_ROUTES) if on_gpu(model) else cpu_routes(flags)
    wanted = [r for r in routes if backend in (None, r[0])]
    candidates = [r for r in wanted if r[0] == "torch" or _has_graphs(onnx_dir, r[1])]
    evidence = evidence_for(model, onnx_dir)
    _gate_missing(model, evidence, identity, [r for r in candidates if r != ("torch", "fp32")], onnx_dir, say)
    passed = [r for r in candidates if r == ("torch", "fp32") or evidence.passed(identity, route_name(*r))]
    if not passed:
        raise ConfigError(f"no {backend} route passed its parity gate for this model on {identity}; use "
                          "--backend torch --precision fp32 (the reference).")
    _probe_missing(model, evidence, identity, passed, onnx_dir, say)
    best = max(passed, key=lambda r: evidence.speed(identity, route_name(*r)) or 0.0)
    return RouteChoice(*best, _reason(best, wanted, candidates, evidence, identity))


def require_passed(model: ScoringModel, precision: str, *, autocast: bool | None = None,
                   say: Say = lambda _line: None) -> RouteChoice:
    """A torch route asked for by name that runs only where it passed its parity gate: fp16 / bf16 under
    autocast for a model on a GPU (``autocast=True``: on this CPU, as tests gate them), gated once per model and
    device and kept in its evidence; :class:`ConfigError` with the verdict where it failed."""
    if precision == "fp32":
        return RouteChoice("torch", "fp32", "route: torch-fp32 (the reference)")
    identity = device_identity(model)
    name = route_name("torch", precision, autocast_on_cpu=bool(autocast) and not on_gpu(model))
    evidence = evidence_for(model)
    if evidence.verdict(identity, name) is None:
        with runners_for("torch", precision, model=model, autocast=autocast) as route:
            record_verdicts(evidence, gate_routes(model, [route], say), identity)
        _save(evidence, say)
    verdict = evidence.verdict(identity, name) or {}
    if not verdict.get("passed"):
        raise ConfigError(f"{name} failed its parity gate for this model on {identity} "
                          f"({'; '.join(verdict.get('failures', []))}): its scores would not be the model's; use "
                          "--precision fp32, or --precision auto (the fastest route that passed).")
    worst = max(verdict.get(k, {}).get("max_abs_dprob") or 0.0 for k in ("random_patches", "images"))
    return RouteChoice("torch", precision, f"route: {name} on {identity} (asked for; it passed its parity gate "
                                           f"for this model: max |dp| {worst:.3g}, no decision flip)")


ORT_SERVED = ("fp32", "int8", "auto")  # what a Triton python-ort encoder can serve


def served_ort_route(onnx_dir: str | os.PathLike, precision: str, flags: frozenset[str] | None = None,
                     say: Say = lambda _line: None) -> RouteChoice:
    """The ONNX Runtime route a CPU server of ``onnx_dir`` (a ``spai export`` folder, without its model) runs:
    fp32 as asked; int8 only where its verdict on this CPU, for these very graph files, passed (ConfigError with
    the verdict and how to fix otherwise); ``auto`` the faster of the two where int8 passed (speeds probed once
    and kept), else fp32, saying why."""
    if precision not in ORT_SERVED:
        raise ConfigError(f"ONNX Runtime serves {', '.join(ORT_SERVED)}, not {precision!r}.")
    if precision == "fp32":
        return RouteChoice("ort", "fp32", "route: ort-fp32 (asked for)")
    folder = Path(onnx_dir)
    flags = cpu_flags() if flags is None else flags
    identity = cpu_identity(flags)
    evidence = RouteEvidence.load(folder / EVIDENCE_FILE, None)
    verdict = evidence.verdict(identity, "ort-int8") if _has_graphs(folder, "int8") else None
    if not (verdict and verdict["passed"]):
        why = _int8_not_passed(folder, verdict, identity)
        if precision == "int8":
            fix = ("its scores would not be the model's" if verdict else
                   f"run `spai export CKPT -o {folder} --precision int8` on this CPU (it writes and gates the "
                   "int8 graph)")
            raise ConfigError(f"cannot serve int8: {why}; {fix}, or serve --precision fp32.")
        return RouteChoice("ort", "fp32", f"route: ort-fp32 (auto; ort-int8 is not served: {why})")
    if precision == "int8":
        return RouteChoice("ort", "int8", f"route: ort-int8 (asked for; it passed its parity gate on {identity})")
    routes = [r for r in cpu_routes(flags) if r[0] == "ort"]
    _probe_missing(None, evidence, identity, routes, folder, say)
    best = max(routes, key=lambda r: evidence.speed(identity, route_name(*r)) or 0.0)
    return RouteChoice(*best, _reason(best, routes, routes, evidence, identity))


def _int8_not_passed(folder: Path, verdict: dict[str, Any] | None, identity: str) -> str:
    if not _has_graphs(folder, "int8"):
        return f"{folder} has no {ENCODER_FILES['int8']}"
    if verdict is None:
        return f"{folder / EVIDENCE_FILE} holds no int8 verdict for these graphs on {identity}"
    return f"ort-int8 failed its parity gate for this model on {identity} ({'; '.join(verdict['failures'])})"


def _gate_missing(model: ScoringModel, evidence: RouteEvidence, identity: str, routes: list[tuple[str, str]],
                  onnx_dir: str | os.PathLike | None, say: Say) -> None:
    missing = [r for r in routes if evidence.verdict(identity, route_name(*r)) is None]
    if not missing:
        return
    import contextlib

    with contextlib.ExitStack() as stack:
        entered = [stack.enter_context(runners_for(*r, model=model, onnx_dir=onnx_dir)) for r in missing]
        record_verdicts(evidence, gate_routes(model, entered, say), identity)
    _save(evidence, say)


def _probe_missing(model: ScoringModel | None, evidence: RouteEvidence, identity: str, routes: list[tuple[str, str]],
                   onnx_dir: str | os.PathLike | None, say: Say) -> None:
    missing = [r for r in routes if evidence.speed(identity, route_name(*r)) is None]
    for r in missing:
        say(f"measuring the speed of {route_name(*r)} on this CPU (once) ...")
        with runners_for(*r, model=model, onnx_dir=onnx_dir) as route:
            rate = probe_speed(route)
        evidence.cpu(identity)["speeds"][route_name(*r)] = {"patches_per_s": round(rate, 3),
                                                            "probe_patches": PROBE_PATCHES}
    if missing:
        _save(evidence, say)


def _save(evidence: RouteEvidence, say: Say) -> None:
    """Keep the evidence; an export folder that cannot be written keeps it in the cache instead."""
    try:
        evidence.save()
    except OSError as e:
        evidence.path = cache_dir() / "routes" / f"{evidence.fingerprint[:24]}.json"
        say(f"cannot write route evidence beside the export ({e.strerror}); keeping it in {evidence.path}")
        evidence.save()


def _reason(best: tuple[str, str], wanted: list[tuple[str, str]], candidates: list[tuple[str, str]],
            evidence: RouteEvidence, identity: str) -> str:
    """``route: ort-int8 (...)`` and why every route that could be faster was passed over."""
    def rate(r: tuple[str, str]) -> str:
        speed = evidence.speed(identity, route_name(*r))
        return "" if speed is None else f", {speed:.3g} patches/s"

    lines = [f"route: {route_name(*best)} (the fastest route that passed its parity gate for this model on "
             f"{identity}{rate(best)})"]
    for r in wanted:
        if r == best:
            continue
        verdict = evidence.verdict(identity, route_name(*r))
        if r not in candidates:
            lines.append(f"  passed over {route_name(*r)}: no exported graph (`spai export --precision {r[1]}`)")
        elif verdict is not None and not verdict["passed"]:
            lines.append(f"  passed over {route_name(*r)}{rate(r)}: failed its gate ({'; '.join(verdict['failures'])})")
        else:
            lines.append(f"  passed over {route_name(*r)}{rate(r)}: slower here")
    return "\n".join(lines)
