"""Configuration with SPAI's upstream key names (MODEL.*, MODEL.VIT.*, MODEL.FRE.*, DATA.*, TRAIN.*).

A :class:`Config` is a nested mapping with attribute access (``cfg.MODEL.FRE.MASKING_RADIUS``), built from
:data:`DEFAULTS`, then a named config or YAML file (``BASE`` lists supported), then ``KEY VALUE`` overrides.
Unknown keys are errors that name the nearest valid key. Configs are stored in checkpoints as plain dicts.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from spai.errors import ConfigError

MODEL_CONFIG_DIR = Path(__file__).resolve().parent.parent / "model_configs"

# Defaults: upstream SPAI's defaults (spai/model/config.py) where the key exists there, plus our fusion keys.
DEFAULTS: dict[str, Any] = {
    "MODEL_WEIGHTS": "clip",  # backbone family: "clip" (open_clip ViT) or "mfm" (upstream BEiT/MFM ViT)
    "PRETRAINED": "",  # optional local path to backbone weights (open_clip / OpenAI CLIP / MFM file)
    "SEED": 0,
    "MODEL": {
        "NAME": "spai",
        "TYPE": "vit",
        "SID_APPROACH": "freq_restoration",
        "RESOLUTION_MODE": "arbitrary",
        "NUM_CLASSES": 2,
        "REQUIRED_NORMALIZATION": "positive_0_1",
        "FEATURE_EXTRACTION_BATCH": 400,  # patches per encoder call: bounds memory for any image size
        "SID_DROPOUT": 0.5,
        "DROP_RATE": 0.0,
        "DROP_PATH_RATE": 0.0,
        "VIT": {
            "MODEL": "ViT-B-16",  # open_clip model name ('spai-tiny-vit' is ours, in model_configs/open_clip)
            "QUICK_GELU": False,  # OpenAI CLIP weights were trained with QuickGELU: set True for them
            "PATCH_SIZE": 16,
            "EMBED_DIM": 768,
            "DEPTH": 12,
            "NUM_HEADS": 12,
            "MLP_RATIO": 4.0,
            "IMG_SIZE": 224,
            "INTERMEDIATE_LAYERS": list(range(12)),
            "PROJECTION_DIM": 1024,
            "PROJECTION_LAYERS": 2,
            "PATCH_PROJECTION": True,
            "PATCH_PROJECTION_PER_FEATURE": True,
            # init of a backbone built WITHOUT weights: "random" (open_clip's) or "highpass" (deterministic
            # high-pass patch embedding, see spai.model.nn.backbone.highpass_patch_embedding; spai-tiny uses it)
            "INIT": "random",
        },
        "FRE": {
            "MASKING_RADIUS": 16,
            "PROJECTOR_LAST_LAYER_ACTIVATION_TYPE": None,
            "ORIGINAL_IMAGE_FEATURES_BRANCH": True,
            "DISABLE_RECONSTRUCTION_SIMILARITY": False,
            # --- semantic-spectral fusion (each a switch; all off == upstream SPAI) ---
            "SEMANTIC_DIM": 512,
            "NUM_HEADS": 8,
            "EARLY_FUSION_LAYERS": [],
            "USE_ADAPTIVE_GATING": False,
            "USE_FREQUENCY_AWARE_ATTENTION": False,
            "USE_CROSS_ATTENTION": False,
            "USE_HIERARCHICAL_FUSION": False,
            "EXTENDED_STATISTICS": False,  # 12 moments per layer (mean, std, max, min) instead of 6
            "FORK_SECOND_PROJECTION": False,  # reproduce the research fork's quirk (importer sets it)
        },
        "PATCH_VIT": {
            "PATCH_STRIDE": 224,
            "NUM_HEADS": 12,
            "ATTN_EMBED_DIM": 1536,
            "MINIMUM_PATCHES": 4,
        },
        "CLS_HEAD": {"MLP_RATIO": 3},
    },
    "DATA": {
        "BATCH_SIZE": 32,
        "VAL_BATCH_SIZE": None,
        "TEST_BATCH_SIZE": None,
        "IMG_SIZE": 224,
        "NUM_WORKERS": 2,
        "PIN_MEMORY": True,
        "PREFETCH_FACTOR": 2,
        "AUGMENTED_VIEWS": 4,
        "MAX_IMAGE_PIXELS": 178_956_970,  # decompression-bomb limit (PIL's default x 2)
        "MAX_IMAGE_BYTES": 256 * 1024 * 1024,
    },
    "AUG": {
        "MIN_CROP_AREA": 0.2,
        "MAX_CROP_AREA": 1.0,
        "HORIZONTAL_FLIP_PROB": 0.5,
        "VERTICAL_FLIP_PROB": 0.5,
        "ROTATION_PROB": 0.5,
        "ROTATION_DEGREES": 90,
        "GAUSSIAN_BLUR_PROB": 0.5,
        "GAUSSIAN_BLUR_LIMIT": [3, 9],
        "GAUSSIAN_BLUR_SIGMA": [0.01, 0.5],
        "GAUSSIAN_NOISE_PROB": 0.5,
        "GAUSSIAN_NOISE_VAR": [10.0, 50.0],
        "JPEG_COMPRESSION_PROB": 0.5,
        "JPEG_MIN_QUALITY": 50,
        "JPEG_MAX_QUALITY": 100,
    },
    "TRAIN": {
        "START_EPOCH": 0,
        "EPOCHS": 35,
        "WARMUP_EPOCHS": 5,
        "FUSION_ONLY_EPOCHS": 5,  # stage 1 (fusion parts only) lasts this many epochs
        "WEIGHT_DECAY": 0.05,
        "BASE_LR": 5e-4,
        "WARMUP_LR": 2.5e-7,
        "MIN_LR": 2.5e-7,
        "CLIP_GRAD": None,
        "ACCUMULATION_STEPS": 1,
        "AMP": "auto",  # auto | bf16 | fp16 | fp32 (fp32 on CPU)
        "LOSS": "bce",  # bce | focal
        "FOCAL_ALPHA": 0.25,
        "FOCAL_GAMMA": 2.0,
        "SEMANTIC_CONSISTENCY_WEIGHT": 0.1,
        "FREQUENCY_CONSISTENCY_WEIGHT": 0.05,
        "OPTIMIZER": {"NAME": "adamw", "EPS": 1e-8, "BETAS": [0.9, 0.999]},
        "LR_SCHEDULER": {"NAME": "cosine"},
    },
    "TEST": {"ORIGINAL_RESOLUTION": True},
    "PRINT_FREQ": 10,
    "OUTPUT": "output",
    "TAG": "default",
}


class Config(dict):
    """A nested dict with attribute access; nested mappings are Config too."""

    def __init__(self, data: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        for key, value in (data or {}).items():
            self[key] = Config(value) if isinstance(value, Mapping) else copy.deepcopy(value)

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dicts (what checkpoints store: no pickled classes)."""
        return {k: v.to_dict() if isinstance(v, Config) else copy.deepcopy(v) for k, v in self.items()}

    def get_path(self, dotted: str) -> Any:
        """Value at a dotted key such as ``MODEL.FRE.MASKING_RADIUS``."""
        node: Any = self
        for part in dotted.split("."):
            node = node[part]
        return node


def _all_keys(tree: Mapping[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key, value in tree.items():
        full = f"{prefix}{key}"
        keys.append(full)
        if isinstance(value, Mapping):
            keys.extend(_all_keys(value, full + "."))
    return keys


def _unknown_key_error(dotted: str, where: str) -> ConfigError:
    valid = _all_keys(DEFAULTS)
    close = difflib.get_close_matches(dotted, valid, n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]}?" if close else ""
    return ConfigError(f"Unknown config key {dotted!r} in {where}.{hint}")


def _merge(dst: Config, src: Mapping[str, Any], where: str, prefix: str = "") -> None:
    for key, value in src.items():
        dotted = f"{prefix}{key}"
        if key not in dst:
            raise _unknown_key_error(dotted, where)
        if isinstance(dst[key], Mapping):
            if not isinstance(value, Mapping):
                raise ConfigError(f"Config key {dotted} in {where} must be a mapping, got {value!r}.")
            _merge(dst[key], value, where, dotted + ".")
        else:
            dst[key] = Config(value) if isinstance(value, Mapping) else copy.deepcopy(value)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as e:
        raise ConfigError(f"Cannot read config file {path}: {e.strerror}.") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"Config file {path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"Config file {path} must hold a mapping at the top level.")
    return data


def _merge_file(cfg: Config, path: Path, seen: tuple[Path, ...] = ()) -> None:
    if path in seen:
        raise ConfigError(f"Config file {path} includes itself through BASE.")
    data = _read_yaml(path)
    for base in data.pop("BASE", None) or []:
        base_path = resolve_config_path(str(base), relative_to=path.parent)
        _merge_file(cfg, base_path, seen + (path,))
    _merge(cfg, data, str(path))


def list_config_names() -> list[str]:
    """Names of the configs shipped in ``spai/model_configs``."""
    return sorted(p.stem for p in MODEL_CONFIG_DIR.glob("*.yaml"))


def resolve_config_path(name_or_path: str, relative_to: Path | None = None) -> Path:
    """A named config (``spai-tiny``) or a path to a YAML file."""
    named = MODEL_CONFIG_DIR / f"{name_or_path}.yaml"
    if named.is_file():
        return named
    path = Path(name_or_path)
    if not path.is_absolute() and relative_to is not None and (relative_to / path).is_file():
        return relative_to / path
    if path.is_file():
        return path
    names = list_config_names()
    close = difflib.get_close_matches(name_or_path, names, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ConfigError(f"Unknown model config {name_or_path!r}: not a named config ({', '.join(names)}) "
                      f"and not a YAML file.{hint}")


def parse_override_value(text: str) -> Any:
    """``--opt KEY VALUE``: VALUE is parsed as YAML (numbers, lists, true/false, null), never eval'ed."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def merge_overrides(cfg: Config, overrides: Iterable[tuple[str, Any]], where: str = "--opt") -> None:
    """Apply ``(dotted_key, value)`` pairs; string values are parsed with :func:`parse_override_value`."""
    for dotted, value in overrides:
        if isinstance(value, str):
            value = parse_override_value(value)
        node: Any = cfg
        parts = dotted.split(".")
        for part in parts[:-1]:
            if not isinstance(node, Mapping) or part not in node:
                raise _unknown_key_error(dotted, where)
            node = node[part]
        if not isinstance(node, Mapping) or parts[-1] not in node:
            raise _unknown_key_error(dotted, where)
        node[parts[-1]] = Config(value) if isinstance(value, Mapping) else value


def get_config(name_or_cfg: str | Path | Mapping[str, Any] | None = None,
               overrides: Iterable[tuple[str, Any]] = ()) -> Config:
    """Defaults, then a named config / YAML path / mapping, then ``overrides``."""
    cfg = Config(DEFAULTS)
    if isinstance(name_or_cfg, Mapping):
        data = dict(name_or_cfg)
        data.pop("BASE", None)
        _merge(cfg, data, "the given config")
    elif name_or_cfg is not None:
        _merge_file(cfg, resolve_config_path(str(name_or_cfg)))
    merge_overrides(cfg, overrides)
    validate_config(cfg)
    return cfg


def validate_config(cfg: Config) -> None:
    """Cross-field checks that would otherwise fail deep inside the model."""
    vit, fre, pv = cfg.MODEL.VIT, cfg.MODEL.FRE, cfg.MODEL.PATCH_VIT
    depth = len(vit.INTERMEDIATE_LAYERS)
    for layer in fre.EARLY_FUSION_LAYERS:
        if not 0 <= int(layer) < depth:
            raise ConfigError(f"MODEL.FRE.EARLY_FUSION_LAYERS has {layer}, but only {depth} layers are tapped "
                              f"(MODEL.VIT.INTERMEDIATE_LAYERS); use indices 0..{depth - 1}.")
    if pv.ATTN_EMBED_DIM % pv.NUM_HEADS:
        raise ConfigError(f"MODEL.PATCH_VIT.ATTN_EMBED_DIM ({pv.ATTN_EMBED_DIM}) must be divisible by "
                          f"MODEL.PATCH_VIT.NUM_HEADS ({pv.NUM_HEADS}).")
    if vit.PROJECTION_LAYERS < 1:
        raise ConfigError("MODEL.VIT.PROJECTION_LAYERS must be at least 1.")
    if fre.FORK_SECOND_PROJECTION and vit.PROJECTION_DIM != vit.EMBED_DIM:
        raise ConfigError("MODEL.FRE.FORK_SECOND_PROJECTION needs MODEL.VIT.PROJECTION_DIM == MODEL.VIT.EMBED_DIM "
                          "(the research fork's quirk only type-checks then).")
    if not 0 < cfg.MODEL.FRE.MASKING_RADIUS <= vit.IMG_SIZE // 2:
        raise ConfigError(f"MODEL.FRE.MASKING_RADIUS must be in 1..{vit.IMG_SIZE // 2}.")
    if cfg.MODEL.FEATURE_EXTRACTION_BATCH is not None and int(cfg.MODEL.FEATURE_EXTRACTION_BATCH) < 1:
        raise ConfigError("MODEL.FEATURE_EXTRACTION_BATCH must be a positive number of patches.")
