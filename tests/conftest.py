"""Shared fixtures; markers gpu / trt / triton skip themselves where the hardware or library is absent."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SAMPLES_DIR = ROOT.parent / "shared" / "data" / "samples"

torch.set_num_threads(max(1, os.cpu_count() or 1))


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _tensorrt() -> bool:
    """A real TensorRT (not the stub-only package tensorrt-stubs leaves in site-packages)."""
    from export.trt import tensorrt_importable

    return tensorrt_importable()


def _skip_reasons() -> dict[str, str | None]:
    return {
        "gpu": None if torch.cuda.is_available() else "no CUDA GPU on this machine",
        "trt": None if _tensorrt() and torch.cuda.is_available() else
        "TensorRT (the `tensorrt` package with a GPU) is not installed here",
        "triton": None if _has("pytriton") and _has("tritonclient") else
        "nvidia-pytriton / tritonclient not installed (pip install '.[serve]')",
    }


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reasons = _skip_reasons()
    for item in items:
        for marker, reason in reasons.items():
            if reason and marker in item.keywords:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """Route evidence and auto's exports go to a folder of this session, never to the user's ~/.cache/spai."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPAI_CACHE_DIR", str(tmp_path_factory.mktemp("spai_cache")))
        yield


@pytest.fixture(scope="session")
def tiny_model():
    """A spai-tiny model with random weights (seeded), in eval mode. Do not mutate it."""
    import spai

    torch.manual_seed(0)
    return spai.create_model("spai-tiny")


@pytest.fixture(scope="session")
def tiny_onnx_dir(tiny_model, tmp_path_factory) -> Path:
    """patch_encoder.onnx + aggregator.onnx (with attention) of the seeded spai-tiny model."""
    pytest.importorskip("onnxruntime")
    from export.onnx import onnx_from_torch

    return onnx_from_torch(tiny_model, tmp_path_factory.mktemp("tiny_onnx")).directory


@pytest.fixture(scope="session")
def generated_images(tmp_path_factory) -> list[Path]:
    """The project's own corpus (spai.data.samples): JPEG/PNG/WebP of several sizes, one over 2 MP, non-square,
    16-bit, CMYK, EXIF-rotated, RGBA. Needs nothing outside the project."""
    from spai.data.samples import write_sample_images

    return write_sample_images(tmp_path_factory.mktemp("generated_images"))


@pytest.fixture(scope="session")
def check_images(generated_images) -> list[Path]:
    """What end-to-end checks score: the generated corpus, plus the shared samples where present."""
    from spai.images import list_images

    return [*generated_images, *(list_images(SAMPLES_DIR) if SAMPLES_DIR.is_dir() else [])]
