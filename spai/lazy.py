"""``lazy_import``: a heavy dependency named at the top of a module, imported only when first used.

Why: light modules (the inference path, the runners, the serving client, the CLI's parser) must start without
loading torch, onnx or onnxruntime, yet a reader should see every dependency of a module in its header, not
scattered through function bodies. Polygraphy's ``mod.lazy_import`` is the model::

    onnx = lazy_import("onnx")          # nothing is imported here
    onnx.load(path)                     # the first attribute access imports onnx

A missing package raises the usual ImportError (ModuleNotFoundError) at first use, naming it.
"""

from __future__ import annotations

import importlib
import types
from typing import Any


class LazyModule(types.ModuleType):
    """A stand-in for module ``name`` that imports it on first attribute access and then forwards to it."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.__dict__["_module"] = None

    def _load(self) -> types.ModuleType:
        module = self.__dict__["_module"]
        if module is None:
            module = self.__dict__["_module"] = importlib.import_module(self.__name__)
        return module

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._load(), attr)

    def __dir__(self) -> list[str]:
        return dir(self._load())

    def __repr__(self) -> str:
        state = "loaded" if self.__dict__["_module"] is not None else "not loaded yet"
        return f"<lazy module {self.__name__!r} ({state})>"


def lazy_import(name: str) -> Any:
    """Module ``name`` (dotted names too: ``"onnx.helper"``), imported when one of its attributes is first used."""
    return LazyModule(name)
