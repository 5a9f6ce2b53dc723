"""The ``spai`` command, the top layer: one sub-command per module in this package.

Each module ``spai_cli/<name>.py`` defines ``register(subparsers)``, which adds its parser and sets ``func``
(taking the parsed args, returning an exit code). Commands are thin: the work is in the library (:mod:`spai`),
:mod:`export` and :mod:`serving`. Results go to stdout; messages (the library's log records) to stderr through the
one handler :func:`main` sets up (:mod:`spai_cli.console`). User mistakes raise :class:`spai.SPAIError`:
:func:`spai_cli.console.report_errors` prints the message and returns the error's exit code (README, "Exit codes");
anything else is a bug.
"""

from __future__ import annotations

import argparse
import importlib

from spai_cli.console import console_logging, report_errors

COMMAND_MODULES = ["demo", "predict", "data", "train", "calibrate", "test", "convert", "export", "repository", "serve",
                   "score", "report"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spai", description="SPAI AI-generated image detection toolchain.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"spai_cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``spai``; returns the process exit code."""
    args = build_parser().parse_args(argv)
    with console_logging():
        return report_errors(lambda: args.func(args))
