"""CPU routes: which (backend, precision) scores a checkpoint on this CPU, chosen by evidence.

A route is a pair of runners (:class:`spai.infer.runners.Route`): ``torch-fp32`` (the reference), ``torch-bf16``,
``ort-fp32`` and ``ort-int8``. Whether a reduced-precision route computes the model's scores depends on the
checkpoint (trained weights put logits where bf16 rounding moves them) and on the CPU (ONNX Runtime's int8 kernels
differ between VNNI and AVX2), so ``--precision auto`` takes the fastest route **that passed its parity gate for
this checkpoint on this CPU**:

1. the candidates, in the first-guess order of the CPU's flags (:func:`cpu_routes`);
2. each candidate's gate verdict (:func:`spai.infer.parity.compare_routes` against torch fp32), read from the route
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

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spai.errors import ConfigError
from spai.infer.cpu import cpu_flags, cpu_identity, cpu_routes, has_bf16
from spai.infer.evidence import (
    PROBE_PATCHES,
    RouteEvidence,
    evidence_for,
    gate_routes,
    probe_speed,
    record_verdicts,
    save_evidence,
)
from spai.infer.runners import (
    CPU_CHUNKS,
    Limits,
    OrtRunner,
    Route,
    TorchRunner,
)

if TYPE_CHECKING:
    from spai.model.nn.spai_model import SPAIModel

from spai.model.specs import AGGREGATOR_FILE, ENCODER_FILES, EVIDENCE_FILE, PATCHES, PATCHES_INPUT

BACKENDS = ("torch", "ort")
PRECISIONS = ("fp32", "bf16", "int8")
ROUTES = (("torch", "fp32"), ("torch", "bf16"), ("ort", "fp32"), ("ort", "int8"))  # a CPU's
# A CUDA GPU's, in the order to try them: the encoder under torch.autocast (bf16 first: fp32's exponent range),
# then the reference. TensorRT's fp16 engines are served by Triton (`spai export`).
GPU_ROUTES = (("torch", "bf16"), ("torch", "fp16"), ("torch", "fp32"))
GPU_PRECISIONS = ("fp32", "fp16", "bf16")

log = logging.getLogger(__name__)


def route_name(backend: str, precision: str, autocast_on_cpu: bool = False) -> str:
    """``torch-bf16``, ``ort-int8``, ...; a GPU route run under CPU autocast (tests) is ``torch-bf16-autocast``."""
    return f"{backend}-{precision}" + ("-autocast" if autocast_on_cpu else "")


def on_gpu(model: SPAIModel | None) -> bool:
    """True where ``model`` lives on a GPU (its routes are :data:`GPU_ROUTES`)."""
    return model is not None and getattr(model.device, "type", "cpu") != "cpu"


def device_identity(model: SPAIModel | None, flags: frozenset[str] | None = None) -> str:
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


def runners_for(backend: str, precision: str, *, model: SPAIModel | None = None,
                onnx_dir: str | os.PathLike | None = None, chunk: int | None = None,
                threads: int | None = None, autocast: bool | None = None) -> Route:
    """The :class:`Route` of one route, by name. torch needs ``model``; ort needs ``onnx_dir`` (a ``spai export``
    folder: ``patch_encoder[.int8].onnx`` + ``aggregator.onnx``). ``chunk``: patches per encoder call (default
    :data:`spai.infer.runners.CPU_CHUNKS` on a CPU, the model's chunk on a GPU). The aggregator runs in fp32. A model on
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


def _torch_route(model: SPAIModel | None, precision: str, chunk: int | None, autocast: bool = False) -> Route:
    if model is None:
        raise ConfigError("the torch backend needs a model (spai.create_model(...)).")
    gpu = on_gpu(model)
    batch = chunk or (None if gpu else CPU_CHUNKS.get(("torch", precision), CPU_CHUNKS[("torch", "bf16")]))
    name = route_name("torch", precision, autocast_on_cpu=autocast and not gpu)
    return Route(name, precision, TorchRunner(model, "patch_encoder", batch, precision, autocast=autocast or None),
                 TorchRunner(model, "aggregator"))


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


def choose_route(model: SPAIModel, *, onnx_dir: str | os.PathLike | None = None, backend: str | None = None,
                 flags: frozenset[str] | None = None) -> RouteChoice:
    """The fastest route for this CPU (or the model's GPU) that passed its parity gate for ``model`` (module
    docstring): verdicts and speeds come from the model's evidence, and what is missing is measured once and kept.
    ONNX Runtime routes are candidates where ``onnx_dir`` holds their graphs. ``backend`` limits the candidates to
    one backend."""
    flags = cpu_flags() if flags is None else flags
    identity = device_identity(model, flags)
    backend = None if backend == "auto" else backend
    wanted, candidates = _candidates(list(GPU_ROUTES) if on_gpu(model) else cpu_routes(flags), backend, onnx_dir)
    evidence = evidence_for(model, onnx_dir)
    _gate_missing(model, evidence, identity, [r for r in candidates if r != ("torch", "fp32")], onnx_dir)
    passed = [r for r in candidates if r == ("torch", "fp32") or evidence.passed(identity, route_name(*r))]
    if not passed:
        raise ConfigError(f"no {backend} route passed its parity gate for this model on {identity}; use "
                          "--backend torch --precision fp32 (the reference).")
    _probe_missing(model, evidence, identity, passed, onnx_dir)
    return _fastest(passed, wanted, candidates, evidence, identity)


def choose_recorded_route(onnx_dir: str | os.PathLike, checkpoint_sha256: str, *, backend: str | None = None,
                          flags: frozenset[str] | None = None) -> RouteChoice | None:
    """``auto`` on this CPU from the evidence beside an export alone, without loading the model: the choice
    :func:`choose_route` makes, where that evidence is this checkpoint file's (``checkpoint_sha256``) and holds every
    candidate's verdict on this CPU and every passed route's speed; None where anything is missing (the model is
    then needed to gate or probe)."""
    evidence = RouteEvidence.load(Path(onnx_dir) / EVIDENCE_FILE, None)
    if not checkpoint_sha256 or evidence.checkpoint_sha256 != checkpoint_sha256:
        return None
    flags = cpu_flags() if flags is None else flags
    identity = cpu_identity(flags)
    wanted, candidates = _candidates(cpu_routes(flags), None if backend == "auto" else backend, onnx_dir)
    if any(evidence.verdict(identity, route_name(*r)) is None for r in candidates if r != ("torch", "fp32")):
        return None
    passed = [r for r in candidates if r == ("torch", "fp32") or evidence.passed(identity, route_name(*r))]
    if any(evidence.speed(identity, route_name(*r)) is None for r in passed):
        return None
    return _fastest(passed, wanted, candidates, evidence, identity)


def _candidates(routes: Sequence[tuple[str, str]], backend: str | None, onnx_dir: str | os.PathLike | None
                ) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(the routes of ``backend``, those of them that can run: torch, or ORT where ``onnx_dir`` has the graphs)."""
    wanted = [r for r in routes if backend in (None, r[0])]
    return wanted, [r for r in wanted if r[0] == "torch" or _has_graphs(onnx_dir, r[1])]


def _fastest(passed: list[tuple[str, str]], wanted: list[tuple[str, str]], candidates: list[tuple[str, str]],
             evidence: RouteEvidence, identity: str) -> RouteChoice:
    best = max(passed, key=lambda r: evidence.speed(identity, route_name(*r)) or 0.0)
    return RouteChoice(*best, _reason(best, wanted, candidates, evidence, identity))


def require_passed(model: SPAIModel, precision: str, *, autocast: bool | None = None) -> RouteChoice:
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
            record_verdicts(evidence, gate_routes(model, [route]), identity)
        save_evidence(evidence)
    verdict = evidence.verdict(identity, name) or {}
    if not verdict.get("passed"):
        raise ConfigError(f"{name} failed its parity gate for this model on {identity} "
                          f"({'; '.join(verdict.get('failures', []))}): its scores would not be the model's; use "
                          "--precision fp32, or --precision auto (the fastest route that passed).")
    worst = max(verdict.get(k, {}).get("max_abs_dprob") or 0.0 for k in ("random_patches", "images"))
    return RouteChoice("torch", precision, f"route: {name} on {identity} (asked for; it passed its parity gate "
                                           f"for this model: max |dp| {worst:.3g}, no decision flip)")


ORT_SERVED = ("fp32", "int8", "auto")  # what a Triton python-ort encoder can serve


def served_ort_route(onnx_dir: str | os.PathLike, precision: str, flags: frozenset[str] | None = None
                     ) -> RouteChoice:
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
    _probe_missing(None, evidence, identity, routes, folder)
    return _fastest(routes, routes, routes, evidence, identity)


def _int8_not_passed(folder: Path, verdict: dict[str, Any] | None, identity: str) -> str:
    if not _has_graphs(folder, "int8"):
        return f"{folder} has no {ENCODER_FILES['int8']}"
    if verdict is None:
        return f"{folder / EVIDENCE_FILE} holds no int8 verdict for these graphs on {identity}"
    return f"ort-int8 failed its parity gate for this model on {identity} ({'; '.join(verdict['failures'])})"


def _gate_missing(model: SPAIModel, evidence: RouteEvidence, identity: str, routes: list[tuple[str, str]],
                  onnx_dir: str | os.PathLike | None) -> None:
    missing = [r for r in routes if evidence.verdict(identity, route_name(*r)) is None]
    if not missing:
        return
    import contextlib

    with contextlib.ExitStack() as stack:
        entered = [stack.enter_context(runners_for(*r, model=model, onnx_dir=onnx_dir)) for r in missing]
        record_verdicts(evidence, gate_routes(model, entered), identity)
    save_evidence(evidence)


def _probe_missing(model: SPAIModel | None, evidence: RouteEvidence, identity: str, routes: list[tuple[str, str]],
                   onnx_dir: str | os.PathLike | None) -> None:
    missing = [r for r in routes if evidence.speed(identity, route_name(*r)) is None]
    for r in missing:
        log.info("measuring the speed of %s on this CPU (once) ...", route_name(*r))
        with runners_for(*r, model=model, onnx_dir=onnx_dir) as route:
            rate = probe_speed(route)
        evidence.cpu(identity)["speeds"][route_name(*r)] = {"patches_per_s": round(rate, 3),
                                                            "probe_patches": PROBE_PATCHES}
    if missing:
        save_evidence(evidence)


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
