"""spai-deploy: SPAI (any-resolution AI-generated image detection) with semantic-spectral fusion.

Attributes load lazily (PEP 562), so ``import spai.errors`` / ``spai.infer.scorer`` / ``spai.infer.runners`` stay light:
torch is imported only when a model is asked for.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Config": "spai.model.config", "get_config": "spai.model.config",
    "AccuracyError": "spai.errors", "CheckpointError": "spai.errors", "ConfigError": "spai.errors",
    "DataError": "spai.errors", "ExportError": "spai.errors", "ImageError": "spai.errors",
    "ServingError": "spai.errors", "SPAIError": "spai.errors",
    "create_model": "spai.infer.detector", "list_models": "spai.model.factory", "load_checkpoint": "spai.infer.detector",
    "SPAIDetector": "spai.infer.detector",
    "save_checkpoint": "spai.model.factory",
    "decode_image": "spai.infer.images", "load_image": "spai.infer.images",
    "ImageScore": "spai.infer.scores",
    "SPAIModel": "spai.model.nn.spai_model", "patchify": "spai.model.nn.spai_model",
    "split_frequencies": "spai.model.nn.spectral",
    "PatchSpec": "spai.model.patching", "count_patches": "spai.model.patching", "patch_grid": "spai.model.patching",
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
