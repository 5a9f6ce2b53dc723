"""spai-deploy: SPAI (any-resolution AI-generated image detection) with semantic-spectral fusion."""

from spai.config import Config, get_config
from spai.errors import (AccuracyError, CheckpointError, ConfigError, DataError, ExportError, ImageError,
                         ServingError, SPAIError)
from spai.factory import create_model, list_models, load_checkpoint, save_checkpoint
from spai.images import decode_image
from spai.models.spai_model import ImageScore, SPAIModel
from spai.models.spectral import split_frequencies
from spai.patching import PatchSpec, count_patches, patchify

__version__ = "0.1.0"

__all__ = [
    "AccuracyError", "CheckpointError", "Config", "ConfigError", "DataError", "ExportError", "ImageError",
    "ImageScore", "PatchSpec", "SPAIError", "SPAIModel", "ServingError", "count_patches", "create_model",
    "decode_image", "get_config", "list_models", "load_checkpoint", "patchify", "save_checkpoint",
    "split_frequencies",
]
