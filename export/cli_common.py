"""What ``to_onnx.py`` and ``to_trt.py`` share: their common arguments and error handling (no heavy imports)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """CKPT, output directory and the parity-check options of both export commands."""
    parser.add_argument("checkpoint", help="checkpoint file or named config (e.g. spai-tiny: random weights)")
    parser.add_argument("-o", "--output", default="export_out", help="output directory (default: export_out)")
    parser.add_argument("--check-images", metavar="DIR", help="also check these images (samples.csv = labels)")
    parser.add_argument("--check-patches", type=int, default=256, help="random patches for the parity check")
    parser.add_argument("--fp16-route", choices=("convert", "torch"), default="convert")


def run_reporting_errors(work: Callable[[], int]) -> int:
    """Run ``work``; a user error (:class:`spai.SPAIError`) prints its message and returns its exit code."""
    from spai.errors import SPAIError

    try:
        return work()
    except SPAIError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
