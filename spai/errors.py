"""One error family for everything a user can get wrong.

CLIs catch :class:`SPAIError`, print its message and exit 1; any other exception is a bug and keeps its
traceback. Messages say what went wrong *and* how to fix it.
"""

from __future__ import annotations


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


class ServingError(SPAIError):
    """The inference server cannot be started or reached, or a request failed."""
