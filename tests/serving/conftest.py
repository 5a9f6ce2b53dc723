"""Fixtures of the serving tests: a spai-tiny export (with attention) and a python-ort repository."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_export(tiny_model, tmp_path_factory) -> Path:
    """patch_encoder.onnx + aggregator.onnx (with attention) of the seeded spai-tiny model."""
    pytest.importorskip("onnxruntime")
    from serving.export_for_serving import export_for_serving

    return export_for_serving(tiny_model, tmp_path_factory.mktemp("tiny_export"))


@pytest.fixture(scope="session")
def ort_repo(tiny_export, tmp_path_factory) -> Path:
    """A python-ort repository (what the nvidia-pytriton server can load) built from ``tiny_export``."""
    from serving.repository import build_repository

    return build_repository(tiny_export, "python-ort", tmp_path_factory.mktemp("repo") / "models")


@pytest.fixture(scope="session")
def sample_paths(samples_dir) -> list[Path]:
    from spai.images import list_images

    paths = list_images(samples_dir)
    if not paths:
        pytest.skip(f"no images in {samples_dir}")
    return paths
