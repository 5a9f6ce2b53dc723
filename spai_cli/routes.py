"""Scoring jobs on the command line: ``--backend torch|ort``, ``--precision fp32|bf16|fp16|int8|auto``, ``--onnx
DIR``, ``--chunk-size`` and ``--device``, shared by ``spai predict``, ``spai test`` and ``spai calibrate``. The
arguments become one :class:`spai.infer.job.ScoringJob`, resolved once here (the model loaded where the route needs
it, ONNX graphs exported into the cache where an ORT route needs them: the library does not import ``export``);
:func:`spai.infer.job.open_scorer` then opens it."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

from spai.errors import ConfigError
from spai.infer.job import DEFAULT_MODEL, ScoringJob, load_model, open_route, record_export, recorded_job, resolve
from spai.infer.prepare import InputLimits

if TYPE_CHECKING:
    from spai.infer.runners import Route
    from spai.model.nn.spai_model import SPAIModel

log = logging.getLogger(__name__)


def add_route_arguments(p: argparse.ArgumentParser) -> None:
    """``--backend``, ``--precision``, ``--onnx`` and ``--chunk-size``."""
    p.add_argument("--backend", choices=("torch", "ort", "auto"),
                   help="torch (PyTorch) or ort (ONNX Runtime); default: torch for fp32/bf16, ort for int8; auto: "
                        "the fastest route for this CPU")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16", "int8", "auto"), default="fp32",
                   help="fp32 (default, exact), bf16 (torch, CPUs with AVX-512 BF16/AMX; a GPU: autocast), fp16 "
                        "(a GPU: autocast), int8 (ort); reduced precisions run only where they passed their parity "
                        "gate; auto: the fastest parity-gated precision for this CPU or GPU")
    p.add_argument("--onnx", metavar="DIR", help="`spai export` folder for --backend ort (default: export the model "
                                                  "into the cache first, once per model)")
    p.add_argument("--chunk-size", type=int, help="patches per encoder call (memory knob; results unchanged)")


def job_from_args(args: argparse.Namespace, device: str = "cpu") -> ScoringJob:
    """The :class:`ScoringJob` the arguments ask for (not yet resolved); ``--checkpoint`` (predict) or the model
    path (test, calibrate: ``args.checkpoint`` set by the caller)."""
    limits = InputLimits(**{k: getattr(args, k) for k in ("max_bytes", "max_pixels") if getattr(args, k, None)})
    return ScoringJob(getattr(args, "model", None) or DEFAULT_MODEL, getattr(args, "checkpoint", None),
                      args.onnx, None if args.backend == "auto" else args.backend, args.precision, device,
                      args.chunk_size, limits, getattr(args, "operating_point", None))


def resolved_job(job: ScoringJob, model: SPAIModel | None = None) -> tuple[ScoringJob, SPAIModel | None]:
    """``job`` resolved once (logged: the route and why), with its model where its route needs it:
    the checkpoint is read and the operating point checked before any export or scoring; an ORT route (or
    ``auto``, whose candidates include ORT) without ``--onnx`` gets the model's graphs exported into the cache
    first (:func:`cached_export`)."""
    if job.device != "cpu":
        check_gpu_job(job)
    recorded = recorded_job(job) if model is None else None
    if recorded is not None:  # auto picked an ORT route from this checkpoint's recorded evidence: no torch model
        return recorded, None
    if model is None and job.needs_model():
        model = load_model(job)
    if model is not None:
        model.calibration.operating_point(job.operating_point)  # an unknown operating point fails before any export
    if job.device == "cpu" and not job.onnx_dir and model is not None and _may_run_ort(job):
        job = dataclasses.replace(job, onnx_dir=cached_export(model))
    asked, job = job, resolve(job, model)
    if asked.by_name:  # no gate: say which route
        log.info("route: %s%s", job.route, "" if job.device == "cpu" else f" on {job.device}")
    elif asked.precision == "auto" and model is not None:
        record_export(job, model)
    return job, model


@contextlib.contextmanager
def scoring_route(args: argparse.Namespace, model: SPAIModel) -> Iterator[Route | None]:
    """For ``spai test`` / ``spai calibrate``: None for the default route (the model itself, on its device),
    else the entered route of the job the arguments ask for."""
    if args.backend in (None, "torch") and args.precision == "fp32" and not args.chunk_size:  # the reference
        yield None
        return
    asked = dataclasses.replace(job_from_args(args, model.device.type), model=model.cfg.MODEL.NAME, checkpoint=None)
    job, _ = resolved_job(asked, model)
    with open_route(job, model) as route:
        yield route


def _may_run_ort(job: ScoringJob) -> bool:
    if job.precision == "auto":
        return job.backend != "torch"
    return job.backend_and_precision()[0] == "ort"


def torch_device(args: argparse.Namespace) -> str:
    """``--device``: cpu (the default), or cuda for the torch routes of a GPU (fp32, and fp16 / bf16 under autocast
    where they passed their parity gate); refuses cuda without a CUDA GPU, or with a CPU route."""
    device = getattr(args, "device", None) or "cpu"
    if device == "cpu":
        return device
    check_gpu_job(job_from_args(args, device))
    import torch

    if not torch.cuda.is_available():
        raise ConfigError("--device cuda: PyTorch sees no CUDA GPU on this machine (torch.cuda.is_available() is "
                          "False); leave out --device to score on the CPU.")
    return device


def check_gpu_job(job: ScoringJob) -> None:
    """On a GPU the routes are torch fp32 / fp16 / bf16: refuse a CPU route (int8 / ort) asked for by name."""
    from spai.infer.routes import resolve_gpu_route

    resolve_gpu_route(job.backend, "fp32" if job.precision == "auto" else job.precision)


def cached_export(model: SPAIModel) -> str:
    """The model's fp32 and int8 graphs in the cache (``$SPAI_CACHE_DIR/exports/<weights hash>``), exported the
    first time ``auto`` needs them."""
    from spai.infer.evidence import cache_dir, model_fingerprint
    from spai.model.specs import AGGREGATOR_FILE, ENCODER_FILES

    folder = cache_dir() / "exports" / model_fingerprint(model)[:24]
    if not all((folder / f).is_file() for f in (ENCODER_FILES["fp32"], ENCODER_FILES["int8"], AGGREGATOR_FILE)):
        exported(model, "int8", str(folder))
    return str(folder)


def exported(model: SPAIModel, precision: str, folder: str) -> str:
    """Export ``model`` to ONNX in ``folder`` (and its int8 encoder for ``precision`` int8)."""
    from export.onnx import onnx_from_torch
    from export.quantize import patch_encoder_int8

    log.info("exporting the model to ONNX in %s (run `spai export` once and pass --onnx to skip this) ...", folder)
    graphs = onnx_from_torch(model, folder)
    if precision == "int8":
        patch_encoder_int8(graphs.patch_encoder)
    return folder
