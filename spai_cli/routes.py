"""Scoring routes on the command line: ``--backend torch|ort``, ``--precision fp32|bf16|int8|auto`` and
``--onnx DIR``, shared by ``spai predict``, ``spai test`` and ``spai calibrate`` (:mod:`spai.infer.routes` picks the
route, by name or, for ``auto``, by evidence; :func:`spai.infer.routes.runners_for` builds its runners)."""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from collections.abc import Iterator
from typing import TYPE_CHECKING

from spai.errors import ConfigError

if TYPE_CHECKING:
    from spai.infer.runners import Route
    from spai.model.nn.spai_model import SPAIModel


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
                                                  "to a temporary folder first)")
    p.add_argument("--chunk-size", type=int, help="patches per encoder call (memory knob; results unchanged)")


def chosen_route(args: argparse.Namespace, model: SPAIModel | None) -> tuple[str, str, str | None]:
    """(backend, precision, the ONNX folder to use) the arguments ask for, printed to stderr. ``auto`` takes the
    fastest route that passed its parity gate for ``model`` on this CPU (:func:`spai.infer.routes.choose_route`); without
    ``--onnx`` it first exports the model's graphs (fp32 and int8) into the cache, once per model."""
    from spai.infer.routes import resolve_route

    if args.precision != "auto":
        backend, precision = resolve_route(args.backend, args.precision)
        print(f"route: {backend}-{precision}", file=sys.stderr)
        return backend, precision, args.onnx
    if model is None:
        raise ConfigError("--precision auto gates the routes against the model itself: pass --checkpoint (or "
                          "--model), or pick a route (--backend ort --precision int8).")
    onnx_dir = args.onnx or (None if args.backend == "torch" else cached_export(model))
    backend, precision = model.route_for(args.backend, "auto", onnx_dir)
    return backend, precision, onnx_dir


def torch_device(args: argparse.Namespace) -> str:
    """``--device``: cpu (the default), or cuda for the torch routes of a GPU (fp32, and fp16 / bf16 under autocast
    where they passed their parity gate); refuses cuda without a CUDA GPU, or with a CPU route."""
    device = getattr(args, "device", None) or "cpu"
    if device == "cpu":
        return device
    check_gpu_route(args)
    import torch

    if not torch.cuda.is_available():
        raise ConfigError("--device cuda: PyTorch sees no CUDA GPU on this machine (torch.cuda.is_available() is "
                          "False); leave out --device to score on the CPU.")
    return device


def check_gpu_route(args: argparse.Namespace) -> None:
    """On a GPU the routes are torch fp32 / fp16 / bf16: refuse a CPU route (int8 / ort) asked for by name."""
    from spai.infer.routes import resolve_gpu_route

    if args.precision != "auto":
        resolve_gpu_route(args.backend, args.precision)
    elif args.backend not in (None, "torch", "auto"):
        resolve_gpu_route(args.backend, "fp32")


def gpu_route(args: argparse.Namespace, model: SPAIModel) -> tuple[str, str]:
    """(backend, precision) for a model on a GPU, printed to stderr with why: fp32 as asked; fp16 / bf16 only
    where they passed their parity gate for this model on this GPU; ``auto`` the fastest route that passed."""
    from spai.infer.routes import choose_route, require_passed, resolve_gpu_route

    def say(line: str) -> None:
        print(line, file=sys.stderr)

    if args.precision == "auto":
        choice = choose_route(model, backend="torch", say=say)
    else:
        choice = require_passed(model, resolve_gpu_route(args.backend, args.precision)[1], say=say)
    say(choice.reason)
    return choice.backend, choice.precision


def cached_export(model: SPAIModel) -> str:
    """The model's fp32 and int8 graphs in the cache (``$SPAI_CACHE_DIR/exports/<weights hash>``), exported the
    first time ``auto`` needs them."""
    from spai.infer.evidence import cache_dir, model_fingerprint
    from spai.model.specs import AGGREGATOR_FILE, ENCODER_FILES

    folder = cache_dir() / "exports" / model_fingerprint(model)[:24]
    if not all((folder / f).is_file() for f in (ENCODER_FILES["fp32"], ENCODER_FILES["int8"], AGGREGATOR_FILE)):
        exported(model, "int8", str(folder))
    return str(folder)


@contextlib.contextmanager
def route_runners(model: SPAIModel | None, backend: str, precision: str, onnx_dir: str | None = None,
                  chunk: int | None = None) -> Iterator[Route]:
    """The entered :class:`spai.infer.runners.Route` of a route; ``ort`` without ``onnx_dir`` exports ``model`` to a
    temporary folder first (and builds its int8 encoder for int8)."""
    from spai.infer.routes import runners_for

    with contextlib.ExitStack() as stack:
        if backend == "ort":
            if not onnx_dir:
                onnx_dir = exported(model, precision, stack.enter_context(tempfile.TemporaryDirectory()))
            model = None  # the ORT route needs the graphs only (the caller may free the torch weights)
        yield stack.enter_context(runners_for(backend, precision, model=model, onnx_dir=onnx_dir, chunk=chunk))


@contextlib.contextmanager
def scoring_runners(args: argparse.Namespace, model: SPAIModel) -> Iterator[Route | None]:
    """For ``spai test`` / ``spai calibrate``: None for the default route (the model itself, on its device),
    else the entered route the arguments ask for."""
    if args.backend in (None, "torch") and args.precision == "fp32" and not args.chunk_size:  # the reference
        yield None
        return
    backend, precision, onnx_dir = chosen_route(args, model)
    with route_runners(model, backend, precision, onnx_dir=onnx_dir, chunk=args.chunk_size) as route:
        yield route


def exported(model: SPAIModel, precision: str, folder: str) -> str:
    """Export ``model`` to ONNX in ``folder`` (and its int8 encoder for ``precision`` int8)."""
    from export.onnx import onnx_from_torch
    from export.quantize import patch_encoder_int8

    print(f"exporting the model to ONNX in {folder} (run `spai export` once and pass --onnx to skip this) ...",
          file=sys.stderr)
    graphs = onnx_from_torch(model, folder)
    if precision == "int8":
        patch_encoder_int8(graphs.patch_encoder)
    return folder
