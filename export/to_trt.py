"""``python export/to_trt.py CKPT [-o DIR]`` (= ``spai export``): checkpoint -> ONNX -> parity report -> TensorRT
engines. CKPT is any checkpoint ``spai.create_model(checkpoint=...)`` reads, or a named config such as
``spai-tiny`` (random weights). Exit codes: see :mod:`export.cli`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

if __package__ in (None, ""):  # run by path: the repo root first, not export/ (its onnx.py would shadow onnx)
    _HERE = Path(__file__).resolve().parent
    sys.path[:] = [str(_HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _HERE]

from export.cli import add_arguments, run  # noqa: E402  (after the path fix)
from spai.errors import SPAIError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code. As ``spai export``: progress on stderr, the report on stdout, a user
    mistake one ``error: ...`` line and its exit code (the ``spai`` command's handler is spai_cli's, a layer up)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S")
    for name in ("spai", "export"):
        logging.getLogger(name).setLevel(logging.INFO)
    try:
        return run(args)
    except SPAIError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
