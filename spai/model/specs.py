"""The single source of truth for tensor names, dtypes and shapes of the two deployed graphs.

The inference module and the runners (:mod:`spai.infer.scorer`, :mod:`spai.infer.runners`), ONNX export, TensorRT profiles,
Triton configs (:mod:`serving.repository`) and tests all read these. Pure numpy: no torch.
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
    dtype: str  # numpy dtype name: "float32", "float16", "bool", "uint8"
    shape: tuple[int, ...]  # without the batch dimension; -1 = dynamic

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)

    @property
    def triton_dtype(self) -> str:
        return {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "bool": "TYPE_BOOL", "object": "TYPE_STRING",
                "int64": "TYPE_INT64", "int32": "TYPE_INT32", "uint8": "TYPE_UINT8"}[self.dtype]


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


# Tensor names every caller uses (the graphs below declare them).
PATCHES, PATCH_FEATURES = "patches", "patch_features"
PATCH_MASK, LOGITS, ATTENTION = "patch_mask", "logits", "attention"
# What the deployed encoder graphs take: N x 3 x 224 x 224 uint8 pixel values (150 kB a patch; the graph scales
# them to [0, 1] by x / 255 before the spectral filter, exactly as training does).
PATCHES_INPUT = TensorSpec(PATCHES, "uint8", (3, PATCH_SIZE, PATCH_SIZE))


def patch_encoder_spec(feature_dim: int) -> ModelSpec:
    """``patches`` (:data:`PATCHES_INPUT`: N x 3 x 224 x 224 uint8) -> ``patch_features`` (N x D float32)."""
    return ModelSpec(
        name="patch_encoder",
        inputs=(PATCHES_INPUT,),
        outputs=(TensorSpec(PATCH_FEATURES, "float32", (feature_dim,)),),
        dynamic_axes={PATCHES: {0: "num_patches"}, PATCH_FEATURES: {0: "num_patches"}},
    )


def aggregator_spec(feature_dim: int) -> ModelSpec:
    """``patch_features`` (B x L x D) + ``patch_mask`` (B x L bool, True = real patch) -> ``logits`` (B x 1) and
    ``attention`` (B x L: the spectral context attention over the patches, mean over heads; for heatmaps)."""
    return ModelSpec(
        name="aggregator",
        inputs=(TensorSpec(PATCH_FEATURES, "float32", (-1, feature_dim)), TensorSpec(PATCH_MASK, "bool", (-1,))),
        outputs=(TensorSpec(LOGITS, "float32", (1,)), TensorSpec(ATTENTION, "float32", (-1,))),
        dynamic_axes={PATCH_FEATURES: {0: "batch", 1: "num_patches"}, PATCH_MASK: {0: "batch", 1: "num_patches"},
                      LOGITS: {0: "batch"}, ATTENTION: {0: "batch", 1: "num_patches"}},
    )


# Default TensorRT optimisation profile ranges (overridable on the command line).
DEFAULT_MIN_BATCH = 1
# The patch batch TensorRT tunes the encoder's kernels for (the profile's opt shape) AND the batch the trt
# repository's dynamic batcher prefers to send it (serving.repository): one value, so that the engine runs its
# busy-time batches at the shape it was tuned at.
DEFAULT_OPT_BATCH = 128
DEFAULT_MAX_BATCH = 256
DEFAULT_MAX_PATCHES = 1024  # most patches per image the aggregator engine accepts (L dimension)
OPSET = 18
DEFAULT_MAX_IMAGES = 16  # most images per aggregator call (B dimension of the aggregator engine)
DEFAULT_OPT_PATCHES = 16  # typical patches per image (a 1024 x 896 photo) the aggregator engine is tuned for

Shape = tuple[int, ...]

# The files of an export folder (`spai export`), named once: exporters write, runners, the repository builder and
# the benchmarks read these names.
ENCODER_FILES = {"fp32": "patch_encoder.onnx", "fp16": "patch_encoder.fp16.onnx", "int8": "patch_encoder.int8.onnx"}
AGGREGATOR_FILE = "aggregator.onnx"
PLAN_FILES = {"patch_encoder": "patch_encoder.plan", "aggregator": "aggregator.plan"}
MANIFEST_FILE = "engine.json"  # the engines' profiles, precisions and outputs
CALIBRATION_FILE = "calibration.json"  # the checkpoint's calibration: the graphs' logits stay raw
EVIDENCE_FILE = "route_evidence.json"  # each route's parity verdict and speed for the exported checkpoint


def trt_profile(spec: ModelSpec, min_batch: int | None = None, opt_batch: int | None = None,
                max_batch: int | None = None, max_patches: int | None = None,
                max_images: int | None = None) -> dict[str, tuple[Shape, Shape, Shape]]:
    """(min, opt, max) shape of every input of ``spec`` for one TensorRT optimisation profile.

    Patch encoder: batch = number of patches (``min/opt/max_batch``). Aggregator: batch = images
    (1..``max_images``), sequence = patches per image (1..``max_patches``). ``None`` = the defaults above.
    """
    lo, hi = min_batch or DEFAULT_MIN_BATCH, max_batch or DEFAULT_MAX_BATCH
    opt = min(max(opt_batch or DEFAULT_OPT_BATCH, lo), hi)
    if not 1 <= lo <= hi:
        raise ValueError(f"need 1 <= min batch ({lo}) <= max batch ({hi})")
    if spec.name == "patch_encoder":
        inp = spec.inputs[0]
        return {inp.name: ((lo, *inp.shape), (opt, *inp.shape), (hi, *inp.shape))}
    seq_max = max_patches or DEFAULT_MAX_PATCHES
    images = max_images or DEFAULT_MAX_IMAGES
    seq_opt = min(DEFAULT_OPT_PATCHES, seq_max)
    dim = spec.input(PATCH_FEATURES).shape[-1]
    return {PATCH_FEATURES: ((1, 1, dim), (1, seq_opt, dim), (images, seq_max, dim)),
            PATCH_MASK: ((1, 1), (1, seq_opt), (images, seq_max))}


def max_shapes(profile: dict[str, tuple[Shape, Shape, Shape]]) -> dict[str, Shape]:
    """The largest shape per input of a profile: what a runner standing in for that engine declares."""
    return {name: shapes[2] for name, shapes in profile.items()}


def min_shapes(profile: dict[str, tuple[Shape, Shape, Shape]]) -> dict[str, Shape]:
    """The smallest shape per input of a profile: the minimums a runner standing in for that engine declares."""
    return {name: shapes[0] for name, shapes in profile.items()}
