"""``spai export CKPT -o DIR``: ONNX (fp32 + mixed fp16), the parity report and, where TensorRT and a GPU exist,
the TensorRT engines (the same function as ``python export/to_trt.py``)."""

from __future__ import annotations

import argparse

from export.cli import add_arguments, run


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a checkpoint to ONNX (+ TensorRT engines) with a parity report")
    add_arguments(p)
    p.set_defaults(func=run)
