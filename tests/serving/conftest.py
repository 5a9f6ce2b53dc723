"""Fixtures of the serving tests: a python-ort repository of the spai-tiny export."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def ort_repo(tiny_onnx_dir, tmp_path_factory) -> Path:
    """A python-ort repository (what the nvidia-pytriton server can load) built from ``tiny_onnx_dir``."""
    from serving.repository import build_repository

    return build_repository(tiny_onnx_dir, "python-ort", tmp_path_factory.mktemp("repo") / "models")
