"""The single source of truth for tensor names, dtypes and shapes of the exported models.

ONNX export, TensorRT profiles, Triton configs (serving/build_repository.py) and tests all read these.
Shapes exclude the batch dimension (Triton's convention); -1 marks a dynamic dimension.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PATCH_SIZE = 224


@dataclass(frozen=True)
class TensorSpec:
    """One input or output tensor of an exported model."""

    name: str
    dtype: str  # numpy dtype name: "float32", "float16", "bool"
    shape: tuple[int, ...]  # without the batch dimension; -1 = dynamic

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)

    @property
    def triton_dtype(self) -> str:
        return {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "bool": "TYPE_BOOL", "object": "TYPE_STRING",
                "int64": "TYPE_INT64", "int32": "TYPE_INT32"}[self.dtype]


@dataclass(frozen=True)
class ModelSpec:
    """Inputs, outputs and the dynamic axes of one exported graph."""

    name: str  # file stem and Triton model suffix
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    dynamic_axes: dict[str, dict[int, str]]

    def input(self, name: str) -> TensorSpec:
        return next(t for t in self.inputs if t.name == name)

    def output(self, name: str) -> TensorSpec:
        return next(t for t in self.outputs if t.name == name)


def patch_encoder_spec(feature_dim: int) -> ModelSpec:
    """``patches`` (N x 3 x 224 x 224 float32 in [0, 1]) -> ``patch_features`` (N x D)."""
    return ModelSpec(
        name="patch_encoder",
        inputs=(TensorSpec("patches", "float32", (3, PATCH_SIZE, PATCH_SIZE)),),
        outputs=(TensorSpec("patch_features", "float32", (feature_dim,)),),
        dynamic_axes={"patches": {0: "num_patches"}, "patch_features": {0: "num_patches"}},
    )


def aggregator_spec(feature_dim: int) -> ModelSpec:
    """``patch_features`` (B x L x D) + ``patch_mask`` (B x L bool, True = real patch) -> ``logits`` (B x 1)."""
    return ModelSpec(
        name="aggregator",
        inputs=(TensorSpec("patch_features", "float32", (-1, feature_dim)), TensorSpec("patch_mask", "bool", (-1,))),
        outputs=(TensorSpec("logits", "float32", (1,)),),
        dynamic_axes={"patch_features": {0: "batch", 1: "num_patches"}, "patch_mask": {0: "batch", 1: "num_patches"},
                      "logits": {0: "batch"}},
    )


# Default TensorRT optimisation profile ranges (overridable on the command line).
DEFAULT_MIN_BATCH = 1
DEFAULT_OPT_BATCH = 64
DEFAULT_MAX_BATCH = 256
DEFAULT_MAX_PATCHES = 1024  # most patches per image the aggregator engine accepts (L dimension)
OPSET = 18
