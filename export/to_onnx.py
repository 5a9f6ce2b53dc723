"""``python export/to_onnx.py CKPT -o DIR``: ONNX (fp32 + mixed-precision fp16) and the ORT parity report.

CKPT is any checkpoint ``spai.create_model(checkpoint=...)`` reads, or a named config such as ``spai-tiny``
(random weights). Exit codes: 0 ok, 1 user error (nothing half-written), 3 parity gates failed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: put the repo root (not export/) first on sys.path
    _ROOT = str(Path(__file__).resolve().parent.parent)
    sys.path[:] = [_ROOT] + [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]


from export.cli_common import add_common_arguments, run_reporting_errors  # noqa: E402  (after the path fix)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    args = build_parser().parse_args(argv)

    def work() -> int:
        from export.pipeline import onnx_from_checkpoint, parity_from_onnx

        art = onnx_from_checkpoint(args.checkpoint, args.output, fp16_route=args.fp16_route)
        parity_from_onnx(art, args.output, image_dir=args.check_images, n_random=args.check_patches)
        return 0

    return run_reporting_errors(work)


if __name__ == "__main__":
    sys.exit(main())
