"""One error family for everything a user can get wrong, each error with its exit code.

The command line (:func:`spai_cli.console.report_errors`) prints a :class:`SPAIError`'s message and exits with its
``exit_code``; any other exception is a bug and keeps its traceback. Messages say what went wrong *and* how to fix
it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TypeVar

E = TypeVar("E", bound=BaseException)


class SPAIError(Exception):
    """Base class of every user-facing error raised by spai-deploy."""

    exit_code: int = 1


class ConfigError(SPAIError):
    """A model or training configuration is invalid (unknown key, bad value, unknown model name)."""


class CheckpointError(SPAIError):
    """A checkpoint is missing, truncated, of an unknown layout or unsafe to load."""


class ImageError(SPAIError):
    """An input image cannot be read, is too large or otherwise cannot be scored."""


class DataError(SPAIError):
    """A dataset (CSV, folder) is malformed or empty."""


class ExportError(SPAIError):
    """ONNX or TensorRT export failed, or the output location is unusable."""


class AccuracyError(SPAIError):
    """An exported model does not reproduce PyTorch within the parity gates."""

    exit_code = 3


class CalibrationError(SPAIError):
    """Labelled scores cannot calibrate a model (one class, too few real images for a target false-positive
    rate, NaN scores), or a request names an operating point the model does not have."""


class ServingError(SPAIError):
    """The inference server cannot be started or reached, or a request failed."""


def error_chain(error: BaseException, links: tuple[str, ...] = ("__cause__", "__context__")
                ) -> Iterator[BaseException]:
    """``error`` and every error it chains to through the attributes ``links``, each once."""
    pending: list[BaseException] = [error]
    seen: set[int] = set()
    while pending:
        e = pending.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        pending += [c for c in (getattr(e, link, None) for link in links) if isinstance(c, BaseException)]


def detached(error: E) -> E:
    """``error`` without the frames it was raised in (its traceback and those of the errors it chains to), for an
    error that outlives its frames: kept as a result (a request's answer), those frames' locals hold the whole
    batch, and a result list that holds the error is one of them; raised from a frame that holds it (tritonclient),
    the frame and the error hold each other. Only a full garbage collection frees such a cycle (rarely, under
    load)."""
    for e in error_chain(error):
        e.__traceback__ = None
    return error
