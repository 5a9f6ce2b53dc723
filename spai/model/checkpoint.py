"""Checkpoints of our own: a plain dict read with ``torch.load(weights_only=True)``, written atomically.

Keys: ``model`` (state dict), ``config`` (plain nested dict: it rebuilds the architecture), ``epoch``,
``optimizer``, ``lr_scheduler``, ``scaler``, ``metrics``, plus ``format`` = :data:`NATIVE_FORMAT`.
Foreign formats (upstream SPAI, the fusion fork, bare CLIP weights) are recognised by :mod:`spai.model.importers`.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from spai.errors import CheckpointError
from spai.files import atomic_path

NATIVE_FORMAT = "spai-deploy/1"


def save_payload(payload: dict[str, Any], path: str | os.PathLike) -> Path:
    """``torch.save`` onto ``path`` through :func:`spai.files.atomic_path` (fsynced: a checkpoint must survive a
    power cut); an unwritable folder is a :class:`CheckpointError` that says what to do."""
    try:
        with atomic_path(path, fsync=True) as tmp:
            torch.save(payload, tmp)
    except OSError as e:
        raise CheckpointError(f"Failed to write checkpoint {path}: {e}. The previous checkpoint (if any) is "
                              "untouched; choose a writable output directory with free space.") from e
    return Path(path)


def save_checkpoint(model: torch.nn.Module, path: str | os.PathLike, **state: Any) -> Path:
    """Write ``model`` (weights + plain config) and training ``state`` (epoch, optimizer, ...) atomically."""
    payload = {"format": NATIVE_FORMAT, "model": model.state_dict(), "config": model.cfg.to_dict(), **state}
    return save_payload(payload, path)


def refuse_torchscript(path: str | Path) -> None:
    """OpenAI's JIT CLIP archives are TorchScript programs: refuse them before anything deserialises them."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return
    if any(n.split("/", 1)[-1] == "constants.pkl" or "/code/" in n for n in names):
        raise CheckpointError(
            f"{path} is a TorchScript archive (e.g. OpenAI's JIT ViT-B-16.pt); it is code and is not loaded. "
            "Convert it to plain weights with open_clip: `open_clip.create_model('ViT-B-16-quickgelu', "
            "pretrained='openai')` then torch.save(model.state_dict(), 'clip_b16.pt'), and pass that file.")


def read_checkpoint_file(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint file without executing code: ``weights_only=True``, or the restricted unpickler for
    the pickled-yacs configs of upstream/fork checkpoints. Never falls back to an unrestricted load."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {path} does not exist (or is not a file).")
    if path.stat().st_size == 0:
        raise CheckpointError(f"Checkpoint {path} is empty (0 bytes).")
    refuse_torchscript(path)  # OpenAI JIT archives: refused with a clear message, never deserialised
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        from spai.model.importers.unpickler import load_restricted

        data = load_restricted(path, weights_only_error=e)
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, IndexError, KeyError, TypeError,
            AttributeError) as e:  # arbitrary bytes make the unpickler fail in many ways
        raise CheckpointError(f"Checkpoint {path} is truncated or not a PyTorch checkpoint ({e}). "
                              "Re-copy the file or point to a complete ckpt_epoch_N.pth.") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"Checkpoint {path} holds a {type(data).__name__}, not a dict of tensors.")
    return data


def check_finite(state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Refuse weights with NaN or infinite values (a diverged or corrupted run)."""
    bad = [k for k, v in state_dict.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{source}: {len(bad)} tensors hold NaN or infinite values (first: {bad[:3]}); "
                              "the run diverged or the file is corrupt. Use an earlier checkpoint.")


def load_state_dict_strict(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Strict loading with an error that lists missing / unexpected / mis-shaped keys."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = sorted(f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
                    for k in set(own) & set(state_dict) if own[k].shape != state_dict[k].shape)
    if missing or unexpected or shapes:
        def show(keys: list[str]) -> str:
            return ", ".join(keys[:8]) + (f" (+{len(keys) - 8} more)" if len(keys) > 8 else "")
        parts = [f"missing: {show(missing)}" if missing else "", f"unexpected: {show(unexpected)}" if unexpected
                 else "", f"shape mismatch: {show(shapes)}" if shapes else ""]
        raise CheckpointError(f"{source} does not match the model architecture: "
                              + "; ".join(p for p in parts if p) + ". The checkpoint's config must describe it.")
    check_finite(state_dict, source)
    model.load_state_dict(state_dict, strict=True)
