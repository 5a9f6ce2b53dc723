"""Scoring routes on the command line: ``--backend torch|ort``, ``--precision fp32|bf16|int8|auto`` and
``--onnx DIR``, shared by ``spai predict``, ``spai test`` and ``spai calibrate`` (:func:`spai.runners.resolve_route`
picks the route, :func:`spai.runners.runners_for` builds its runners)."""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from spai.models.spai_model import SPAIModel
    from spai.runners import Route


def add_route_arguments(p: argparse.ArgumentParser) -> None:
    """``--backend``, ``--precision``, ``--onnx`` and ``--chunk-size``."""
    p.add_argument("--backend", choices=("torch", "ort", "auto"),
                   help="torch (PyTorch) or ort (ONNX Runtime); default: torch for fp32/bf16, ort for int8; auto: "
                        "the fastest route for this CPU")
    p.add_argument("--precision", choices=("fp32", "bf16", "int8", "auto"), default="fp32",
                   help="fp32 (default, exact), bf16 (torch, CPUs with AVX-512 BF16/AMX), int8 (ort); auto: the "
                        "fastest parity-gated precision for this CPU")
    p.add_argument("--onnx", metavar="DIR", help="`spai export` folder for --backend ort (default: export the model "
                                                  "to a temporary folder first)")
    p.add_argument("--chunk-size", type=int, help="patches per encoder call (memory knob; results unchanged)")


def chosen_route(args: argparse.Namespace) -> tuple[str, str]:
    """The (backend, precision) the arguments ask for, printed to stderr."""
    from spai.runners import resolve_route

    backend, precision = resolve_route(args.backend, args.precision)
    print(f"route: {backend} {precision}", file=sys.stderr)
    return backend, precision


@contextlib.contextmanager
def route_runners(model: SPAIModel | None, backend: str, precision: str, onnx_dir: str | None = None,
                  chunk: int | None = None) -> Iterator[Route]:
    """The entered :class:`spai.runners.Route` of a route; ``ort`` without ``onnx_dir`` exports ``model`` to a
    temporary folder first (and builds its int8 encoder for int8)."""
    from spai.runners import runners_for

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
    if args.backend in (None, "torch") and args.precision == "fp32" and not args.chunk_size:
        yield None
        return
    with route_runners(model, *chosen_route(args), onnx_dir=args.onnx, chunk=args.chunk_size) as route:
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
