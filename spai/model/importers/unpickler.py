"""A restricted unpickler for upstream SPAI / fusion-fork checkpoints (pickled yacs configs inside).

``torch.load(weights_only=True)`` refuses those files because their ``config`` is a pickled
``yacs.config.CfgNode``. This module reads torch's zip format itself (``<root>/data.pkl`` plus the raw
storages under ``<root>/data/<key>``) with an unpickler that resolves EXACTLY these globals:

``collections.OrderedDict``, ``builtins.set``, ``torch._utils._rebuild_tensor_v2``, ``torch.FloatStorage``,
``torch.LongStorage`` and ``yacs.config.CfgNode`` (mapped to :class:`CfgNodeDict`, a plain dict subclass;
``yacs`` need not be installed). Every other global raises :class:`~spai.errors.CheckpointError` naming it; no
callable outside that list is ever resolved, and there is no fallback to an unrestricted load.
"""

from __future__ import annotations

import _compat_pickle
import io
import os
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from spai.errors import CheckpointError

STORAGE_DTYPES: dict[str, torch.dtype] = {"FloatStorage": torch.float32, "LongStorage": torch.int64}


class CfgNodeDict(dict):
    """Stand-in for ``yacs.config.CfgNode``: the config's keys and values, nothing executable."""

    def __setstate__(self, state: Any) -> None:
        """yacs pickles bookkeeping attributes (immutability flag, deprecated keys); they are dropped."""
        if not isinstance(state, dict):
            raise pickle.UnpicklingError("CfgNode state is not a dict")


class _StorageType:
    """What a ``torch.<X>Storage`` global resolves to: only its dtype, used by ``persistent_load``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.dtype = STORAGE_DTYPES[name]


def _rebuild_tensor(storage: torch.Tensor, offset: int, size: tuple, stride: tuple, requires_grad: bool = False,
                    backward_hooks: Any = None, metadata: Any = None) -> torch.Tensor:
    """Safe equivalent of ``torch._utils._rebuild_tensor_v2`` over a flat tensor read from the zip."""
    for v in (offset, *size, *stride):
        if not isinstance(v, int) or v < 0:
            raise pickle.UnpicklingError(f"bad tensor geometry {size}/{stride}/{offset}")
    needed = offset + sum((n - 1) * s for n, s in zip(size, stride)) + 1 if all(size) else 0
    if needed > storage.numel():
        raise pickle.UnpicklingError(f"tensor of size {tuple(size)} exceeds its storage ({storage.numel()} items)")
    return storage.as_strided(tuple(size), tuple(stride), offset)


def _resolve(module: str, name: str) -> Any:
    if (module, name) == ("collections", "OrderedDict"):
        return OrderedDict
    if (module, name) == ("builtins", "set"):
        return set
    if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
        return _rebuild_tensor
    if module == "torch" and name in STORAGE_DTYPES:
        return _StorageType(name)
    if (module, name) == ("yacs.config", "CfgNode"):
        return CfgNodeDict
    return None


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler over one torch zip archive: allow-listed globals only; storages read from the zip."""

    def __init__(self, data: bytes, archive: zipfile.ZipFile, root: str) -> None:
        super().__init__(io.BytesIO(data))
        self.archive, self.root = archive, root
        self.refused: list[str] = []
        self._storages: dict[str, torch.Tensor] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _compat_pickle.NAME_MAPPING:  # protocol-2 files say __builtin__.set
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        found = _resolve(module, name)
        if found is None:
            self.refused.append(f"{module}.{name}")
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")
        return found

    def persistent_load(self, pid: Any) -> torch.Tensor:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str)):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r:.80}")
        _, stype, key, _location, numel = pid
        if key not in self._storages:
            try:
                raw = self.archive.read(f"{self.root}/data/{key}")
            except KeyError:
                raise pickle.UnpicklingError(f"storage {key} missing from the archive") from None
            flat = torch.frombuffer(bytearray(raw), dtype=stype.dtype) if raw else torch.empty(0, dtype=stype.dtype)
            if flat.numel() != numel:
                raise pickle.UnpicklingError(f"storage {key} holds {flat.numel()} items, expected {numel}")
            self._storages[key] = flat
        return self._storages[key]


def _archive_root(archive: zipfile.ZipFile, path: Path) -> str:
    roots = [n[: -len("/data.pkl")] for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(roots) != 1:
        raise CheckpointError(f"Checkpoint {path} is a zip file but not a PyTorch checkpoint (no data.pkl).")
    root = roots[0]
    order = f"{root}/byteorder"
    if order in archive.namelist() and archive.read(order).strip() != b"little":
        raise CheckpointError(f"Checkpoint {path} was written on a big-endian machine; re-save it on x86/ARM.")
    return root


def load_restricted(path: str | os.PathLike, weights_only_error: Exception | None = None) -> dict[str, Any]:
    """Load an upstream/fork checkpoint without executing anything (see the module docstring)."""
    path = Path(path)
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"Checkpoint {path} uses torch's legacy (pre-1.6) pickle format with non-tensor objects "
            f"({weights_only_error}). Re-save it as a plain state dict with a current torch: "
            "torch.save({'model': state_dict}, out).")
    with zipfile.ZipFile(path) as archive:
        root = _archive_root(archive, path)
        unpickler = RestrictedUnpickler(archive.read(f"{root}/data.pkl"), archive, root)
        try:
            data = unpickler.load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
            if unpickler.refused:
                raise CheckpointError(
                    f"Checkpoint {path} refused: its pickle references {', '.join(sorted(set(unpickler.refused)))}, "
                    "which a weights file never needs (only tensors, OrderedDict, set and yacs CfgNode are "
                    "allowed). Nothing was executed. If you trust the file, re-save only its state dict "
                    "(torch.save({'model': sd}, out)) and load that.") from e
            raise CheckpointError(f"Checkpoint {path} is corrupt or not a supported checkpoint ({e}).") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"Checkpoint {path} holds a {type(data).__name__}, not a dict.")
    return data
