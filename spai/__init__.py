"""spai-deploy: SPAI (any-resolution AI-generated image detection) with semantic-spectral fusion.

Attributes load lazily (PEP 562), so ``import spai.errors`` / ``spai.inference`` / ``spai.runners`` stay light:
torch is imported only when a model is asked for.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Config": "spai.config", "get_config": "spai.config",
    "AccuracyError": "spai.errors", "CheckpointError": "spai.errors", "ConfigError": "spai.errors",
    "DataError": "spai.errors", "ExportError": "spai.errors", "ImageError": "spai.errors",
    "ServingError": "spai.errors", "SPAIError": "spai.errors",
    "create_model": "spai.factory", "list_models": "spai.factory", "load_checkpoint": "spai.factory",
    "save_checkpoint": "spai.factory",
    "decode_image": "spai.images", "load_image": "spai.images",
    "ImageScore": "spai.inference",
    "SPAIModel": "spai.models.spai_model", "patchify": "spai.models.spai_model",
    "split_frequencies": "spai.models.spectral",
    "PatchSpec": "spai.patching", "count_patches": "spai.patching", "patch_grid": "spai.patching",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'spai' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
