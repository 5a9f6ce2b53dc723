"""What the command line shows besides its results (those go to stdout): the one log handler, which writes the
library's, ``export``'s, ``serving``'s and the commands' own messages (INFO and up) to stderr as plain lines, and the
``error: ...`` line of a user mistake with its exit code (README, "Exit codes")."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Iterator

from spai.errors import SPAIError

LOGGERS = ("spai", "export", "serving", "spai_cli")  # whose INFO messages the user sees (other packages: warnings)
STAMPED = ("export",)  # whose lines carry the time of day (an export's steps take minutes)


class ConsoleFormatter(logging.Formatter):
    """The message alone; ``[HH:MM:SS] message`` for the loggers of :data:`STAMPED`."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.name.partition(".")[0] in STAMPED:
            return f"[{self.formatTime(record, '%H:%M:%S')}] {text}"
        return text


class ConsoleHandler(logging.Handler):
    """Each record on the ``sys.stderr`` of the moment (a test's capture too): the INFO and up of
    :data:`LOGGERS`, the warnings of everything else (what Python shows where no handler is set)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(ConsoleFormatter())
        self.addFilter(lambda r: r.levelno >= logging.WARNING or r.name.partition(".")[0] in LOGGERS)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except Exception:  # as logging.StreamHandler: a failed emit never breaks the command
            self.handleError(record)


@contextlib.contextmanager
def console_logging() -> Iterator[None]:
    """One :class:`ConsoleHandler` for the duration of a command, on the root logger (``spai train``, which gives
    the ``spai`` logger handlers of its own and stops its propagation, is then not shown twice), with
    :data:`LOGGERS` at INFO, propagating and without handlers of their own (whatever an earlier in-process run
    left); all undone afterwards, and the handlers the command added closed (the tests run commands in-process,
    one after another)."""
    root, handler = logging.getLogger(), ConsoleHandler()
    loggers = [logging.getLogger(name) for name in LOGGERS]
    saved = [(logger.level, logger.propagate, logger.handlers[:]) for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.INFO)
        logger.propagate, logger.handlers = True, []
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        for logger, (level, propagate, handlers) in zip(loggers, saved, strict=True):
            for added in logger.handlers:
                added.close()
            logger.setLevel(level)
            logger.propagate, logger.handlers = propagate, handlers


def report_errors(work: Callable[[], int | None]) -> int:
    """Run a command: its exit code; for a user error its message on stderr and the error's own exit code."""
    try:
        return int(work() or 0)
    except SPAIError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
