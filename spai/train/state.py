"""Resumable state: RNG states as plain types/tensors (``weights_only`` loading) and checkpoint discovery."""

from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spai.errors import CheckpointError
from spai.model.checkpoint import read_checkpoint_file

CKPT_PATTERN = re.compile(r"^ckpt_epoch_(\d+)\.pth$")


def capture_rng() -> dict[str, Any]:
    """torch, numpy, python and CUDA RNG states, storable with ``torch.save`` and loadable weights-only."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
             "python": list(random.getstate()[1]) + [random.getstate()[0]],
             "python_gauss": random.getstate()[2]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng`."""
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    py = state["python"]
    random.setstate((py[-1], tuple(py[:-1]), state["python_gauss"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def list_epoch_checkpoints(output: str | os.PathLike) -> list[tuple[int, Path]]:
    """``ckpt_epoch_N.pth`` files in ``output``, newest epoch first."""
    out = Path(output)
    if not out.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in out.iterdir() if (m := CKPT_PATTERN.match(p.name))]
    return sorted(found, reverse=True)


def latest_checkpoint(output: str | os.PathLike) -> tuple[Path, dict[str, Any]] | None:
    """The newest epoch checkpoint that reads completely (a truncated newest file falls back to the one before)."""
    for _, path in list_epoch_checkpoints(output):
        try:
            data = read_checkpoint_file(path)
        except CheckpointError:
            continue
        if "optimizer" in data and "epoch" in data:
            return path, data
    return None
