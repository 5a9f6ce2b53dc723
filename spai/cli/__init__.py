"""The ``spai`` command: one sub-command per module in this package.

Each module ``spai/cli/<name>.py`` defines ``register(subparsers)``, which adds its parser and sets
``func`` (taking the parsed args, returning an exit code). User mistakes raise :class:`spai.SPAIError`:
the message is printed and the exit code is 1 (see README, "Exit codes"); anything else is a bug.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

from spai.errors import SPAIError

COMMAND_MODULES = ["demo", "predict", "data", "train", "test", "convert", "serve", "score"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spai", description="SPAI AI-generated image detection toolchain.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        if importlib.util.find_spec(f"spai.cli.{name}") is not None:
            importlib.import_module(f"spai.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``spai``; returns the process exit code."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except SPAIError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
