"""``engine.json``: what built the TensorRT plans of an export directory, and the shapes they accept.

A plan loads only on the TensorRT build (and GPU architecture) that made it, unless it was built
version-compatible; Triton refuses a config whose ``max_batch_size`` or warm-up exceeds the engine's profile.
``spai export`` writes this manifest beside the plans; ``spai repository --variant trt`` reads it, so configs follow
the engines that were really built and plans from another TensorRT are refused before Triton sees them.
Light: json and :mod:`spai.model.specs` only (it runs inside the Triton container too).

Shape (extra keys allowed)::

    {"format": 1, "tensorrt_version": "10.13.0.35", "gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0",
     "cuda_version": "12.9", "feature_dim": 1168, "version_compatible": false,
     "engines": {"patch_encoder": {"file": "patch_encoder.plan", "precision": "fp16", "outputs": ["patch_features"],
                                   "profile": {"patches": [[1, 3, 224, 224], [64, ...], [256, ...]]}},
                 "aggregator": {"file": "aggregator.plan", "precision": "fp32", "outputs": ["logits", "attention"],
                                "profile": {"patch_features": [min, opt, max], "patch_mask": [min, opt, max]}}},
     "onnx_sha256": {"patch_encoder.fp16.onnx": "...", "aggregator.onnx": "..."}, "source": "...", "created": "..."}

``outputs``: the engine's output tensors (those of the ONNX graph it was built from), so that ``spai repository``
knows whether the aggregator has ``attention`` without reading ``aggregator.onnx`` (the Triton image has no
``onnx`` package). Manifests written before it lack the key (:meth:`EngineManifest.aggregator_attention` is None).
"""

from __future__ import annotations

import glob
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spai.errors import ExportError
from spai.files import atomic_path
from spai.lazy import lazy_import
from spai.model.specs import (
    ATTENTION,
    MANIFEST_FILE,
    PATCH_FEATURES,
    PATCH_MASK,
    PLAN_FILES,
    ModelSpec,
    Shape,
    aggregator_spec,
    patch_encoder_spec,
)

onnx = lazy_import("onnx")
if TYPE_CHECKING:
    import tensorrt
else:
    tensorrt = lazy_import("tensorrt")

FORMAT = 1
GRAPHS: dict[str, Callable[[int], ModelSpec]] = {"patch_encoder": patch_encoder_spec, "aggregator": aggregator_spec}
PRECISIONS = ("fp32", "fp16", "bf16", "int8", "fp8")
Profile = dict[str, tuple[Shape, Shape, Shape]]  # input -> (min, opt, max)
REQUIRED = ("tensorrt_version", "gpu", "compute_capability", "cuda_version", "feature_dim", "engines")
OPTIONAL_OUTPUTS = frozenset({ATTENTION})  # an export may leave it out; every other output of the spec is needed


@dataclass(frozen=True)
class EngineEntry:
    """One plan: its file (relative to the manifest), precision, optimisation profile 0 and output names (empty:
    not recorded, an older manifest)."""

    file: str
    precision: str
    profile: Profile
    outputs: tuple[str, ...] = ()

    def max_batch(self) -> int:
        """The profile's largest batch (Triton's ``max_batch_size`` of this model)."""
        return min(shapes[2][0] for shapes in self.profile.values())

    def opt_shapes(self) -> dict[str, Shape]:
        """The shapes the tactics were tuned for (the Triton warm-up request)."""
        return {name: shapes[1] for name, shapes in self.profile.items()}

    def max_shapes(self) -> dict[str, Shape]:
        return {name: shapes[2] for name, shapes in self.profile.items()}


@dataclass(frozen=True)
class EngineManifest:
    """The parsed ``engine.json`` (see the module docstring); :meth:`check` validates it against itself."""

    tensorrt_version: str
    gpu: str
    compute_capability: str
    cuda_version: str
    feature_dim: int
    engines: dict[str, EngineEntry]
    version_compatible: bool = False
    onnx_sha256: dict[str, str] = field(default_factory=dict)
    source: str = ""
    created: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # other keys, written back unchanged

    def to_json(self) -> dict[str, Any]:
        engines = {name: {"file": e.file, "precision": e.precision,
                          **({"outputs": list(e.outputs)} if e.outputs else {}),
                          "profile": {k: [list(s) for s in v] for k, v in e.profile.items()}}
                   for name, e in self.engines.items()}
        return {"format": FORMAT, "tensorrt_version": self.tensorrt_version, "gpu": self.gpu,
                "compute_capability": self.compute_capability, "cuda_version": self.cuda_version,
                "feature_dim": self.feature_dim, "version_compatible": self.version_compatible,
                "engines": engines, "onnx_sha256": dict(self.onnx_sha256), "source": self.source,
                "created": self.created, **self.extra}

    @classmethod
    def from_json(cls, data: Any, where: str = MANIFEST_FILE) -> EngineManifest:
        """Parse (structure and types only; :meth:`check` validates the shapes)."""
        if not isinstance(data, dict):
            raise ExportError(f"{where}: not a JSON object; rebuild the engines with `spai export`.")
        if data.get("format") != FORMAT:
            raise ExportError(f"{where}: format {data.get('format')!r}, this spai-deploy reads format {FORMAT}; "
                              "rebuild the engines with this version's `spai export`.")
        missing = [k for k in REQUIRED if k not in data]
        if missing:
            raise ExportError(f"{where}: missing key(s) {', '.join(missing)}.")
        if not isinstance(data["engines"], dict):
            raise ExportError(f"{where}: 'engines' must be an object with {' and '.join(GRAPHS)}.")
        known = {*REQUIRED, "format", "version_compatible", "onnx_sha256", "source", "created"}
        return cls(tensorrt_version=str(data["tensorrt_version"]), gpu=str(data["gpu"]),
                   compute_capability=str(data["compute_capability"]), cuda_version=str(data["cuda_version"]),
                   feature_dim=_int(data["feature_dim"], f"{where}: feature_dim"),
                   engines={name: _entry(name, raw, where) for name, raw in data["engines"].items()},
                   version_compatible=bool(data.get("version_compatible", False)),
                   onnx_sha256=dict(data.get("onnx_sha256") or {}), source=str(data.get("source", "")),
                   created=str(data.get("created", "")), extra={k: v for k, v in data.items() if k not in known})

    def check(self, where: str = MANIFEST_FILE) -> None:
        """Both engines present, profiles complete and ordered (min <= opt <= max), shapes agreeing with the
        tensor spec, with each other and with ``feature_dim``; :class:`ExportError` naming both values."""
        missing = [g for g in GRAPHS if g not in self.engines]
        if missing:
            raise ExportError(f"{where}: no engine entry for {', '.join(missing)}.")
        for graph, make_spec in GRAPHS.items():
            entry = self.engines[graph]
            if entry.precision not in PRECISIONS:
                raise ExportError(f"{where}: {graph} precision {entry.precision!r} is not one of "
                                  f"{', '.join(PRECISIONS)}.")
            _check_profile(f"{where}: {graph}", entry.profile, make_spec(self.feature_dim), self.feature_dim)
            _check_outputs(f"{where}: {graph}", entry.outputs, make_spec(self.feature_dim))
        agg = self.engines["aggregator"].profile
        for i, label in enumerate(("min", "opt", "max")):
            feats, mask = agg[PATCH_FEATURES][i], agg[PATCH_MASK][i]
            if feats[:2] != mask:
                raise ExportError(f"{where}: aggregator {label} shapes disagree: {PATCH_FEATURES} {list(feats)} "
                                  f"has images x patches {list(feats[:2])} but {PATCH_MASK} is {list(mask)}.")

    def aggregator_attention(self) -> bool | None:
        """Whether the aggregator engine has the ``attention`` output; None where the manifest does not say."""
        outputs = self.engines["aggregator"].outputs
        return ATTENTION in outputs if outputs else None

    def plan_paths(self, directory: str | os.PathLike) -> dict[str, Path]:
        return {graph: Path(directory) / entry.file for graph, entry in self.engines.items()}


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ExportError(f"{what} must be an integer, not {value!r}.")
    return value


def _entry(name: str, raw: Any, where: str) -> EngineEntry:
    if not isinstance(raw, dict) or not {"file", "precision", "profile"} <= set(raw):
        raise ExportError(f"{where}: engine {name!r} needs 'file', 'precision' and 'profile'.")
    profile: Profile = {}
    for tensor, shapes in dict(raw["profile"]).items():
        if not isinstance(shapes, list) or len(shapes) != 3:
            raise ExportError(f"{where}: {name} profile of {tensor!r} must be [min, opt, max] shapes, not {shapes!r}.")
        lo, opt, hi = (tuple(_int(d, f"{where}: {name} {tensor} dimension") for d in s) for s in shapes)
        profile[tensor] = (lo, opt, hi)
    outputs = raw.get("outputs", [])
    if not isinstance(outputs, list) or not all(isinstance(o, str) for o in outputs):
        raise ExportError(f"{where}: {name} outputs must be a list of tensor names, not {outputs!r}.")
    return EngineEntry(str(raw["file"]), str(raw["precision"]), profile, tuple(outputs))


def _check_outputs(what: str, outputs: tuple[str, ...], spec: ModelSpec) -> None:
    if not outputs:
        return
    names = [t.name for t in spec.outputs]
    unknown = [o for o in outputs if o not in names]
    missing = [n for n in names if n not in outputs and n not in OPTIONAL_OUTPUTS]
    if unknown or missing or len(set(outputs)) != len(outputs):
        raise ExportError(f"{what}: outputs {list(outputs)} do not fit the graph's outputs {names} (unknown: "
                          f"{unknown or 'none'}; missing: {missing or 'none'}; optional: {sorted(OPTIONAL_OUTPUTS)}).")


def _check_profile(what: str, profile: Profile, spec: ModelSpec, feature_dim: int) -> None:
    names = sorted(t.name for t in spec.inputs)
    if sorted(profile) != names:
        raise ExportError(f"{what}: profile inputs {sorted(profile)} differ from the graph's inputs {names}.")
    for tensor in spec.inputs:
        lo, opt, hi = profile[tensor.name]
        expected_rank = 1 + len(tensor.shape)
        for label, shape in (("min", lo), ("opt", opt), ("max", hi)):
            if len(shape) != expected_rank:
                raise ExportError(f"{what}: {tensor.name} {label} shape {list(shape)} has rank {len(shape)}, the "
                                  f"graph's input has rank {expected_rank}.")
            for axis, (dim, fixed) in enumerate(zip(shape[1:], tensor.shape, strict=False), start=1):
                if fixed != -1 and dim != fixed:
                    which = "feature_dim" if tensor.name == PATCH_FEATURES and axis == expected_rank - 1 else \
                        f"the graph's axis {axis}"
                    raise ExportError(f"{what}: {tensor.name} {label} shape {list(shape)} has {dim} on axis {axis}, "
                                      f"but {which} is {fixed if which != 'feature_dim' else feature_dim}.")
        if not all(1 <= a <= b <= c for a, b, c in zip(lo, opt, hi, strict=True)):
            raise ExportError(f"{what}: {tensor.name} needs 1 <= min <= opt <= max on every axis, got min "
                              f"{list(lo)}, opt {list(opt)}, max {list(hi)}.")


def manifest_from_profiles(profiles: dict[str, Profile], feature_dim: int, precisions: dict[str, str],
                           outputs: Mapping[str, tuple[str, ...]] | None = None, **fields: Any) -> EngineManifest:
    """A manifest for the plans ``<graph>.plan`` built with ``profiles`` (checked before it is returned);
    ``outputs`` by graph, by default all the spec's (:func:`outputs_from_onnx` reads those of the built graphs)."""
    names = {graph: tuple(t.name for t in make_spec(feature_dim).outputs) for graph, make_spec in GRAPHS.items()}
    names.update(outputs or {})
    engines = {graph: EngineEntry(PLAN_FILES[graph], precisions[graph], profiles[graph], tuple(names[graph]))
               for graph in GRAPHS}
    manifest = EngineManifest(feature_dim=feature_dim, engines=engines, **fields)
    manifest.check()
    return manifest


def outputs_from_onnx(graphs: Mapping[str, str | os.PathLike]) -> dict[str, tuple[str, ...]]:
    """Output names of each graph's ONNX file: a TensorRT engine built from it has these outputs. Needs ``onnx``
    (imported here: this module also runs where it is absent)."""
    return {graph: tuple(o.name for o in onnx.load(str(path), load_external_data=False).graph.output)
            for graph, path in graphs.items()}


def write_manifest(directory: str | os.PathLike, manifest: EngineManifest) -> Path:
    """``DIR/engine.json``, validated and written atomically."""
    manifest.check()
    path = Path(directory) / MANIFEST_FILE
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(manifest.to_json(), indent=2) + "\n")
    return path


def read_manifest(directory: str | os.PathLike, *, require_plans: bool = True) -> EngineManifest:
    """``DIR/engine.json`` parsed and checked; with ``require_plans`` its plan files must exist."""
    path = Path(directory) / MANIFEST_FILE
    if not path.is_file():
        raise ExportError(f"missing export outputs: {path} (the TensorRT engine manifest); build the engines with "
                          f"`spai export CKPT -o {Path(directory)}` on a GPU machine, which writes it beside the "
                          "plans.")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ExportError(f"{path}: not readable JSON ({e}); rebuild the engines with `spai export`.") from e
    manifest = EngineManifest.from_json(data, str(path))
    manifest.check(str(path))
    if require_plans:
        absent = [f"{graph}: {p}" for graph, p in manifest.plan_paths(directory).items() if not p.is_file()]
        if absent:
            raise ExportError(f"{path} names plans missing on disk ({'; '.join(absent)}); copy them next to "
                              "engine.json or rebuild the engines.")
    return manifest


# ---- which TensorRT a machine (or container) has --------------------------------------------------------------

LIBNVINFER_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/local/tensorrt/lib",
                   "/opt/tensorrt/lib", "/usr/lib64")
VERSION_ENV = ("TENSORRT_VERSION", "TRT_VERSION")  # set by NGC containers
_VERSION = re.compile(r"^\d+(\.\d+)*$")


def parse_version(text: str) -> tuple[int, ...]:
    """``"10.13.0.35"`` -> ``(10, 13, 0, 35)``; :class:`ExportError` for anything else."""
    text = text.strip()
    if not _VERSION.match(text):
        raise ExportError(f"{text!r} is not a TensorRT version such as 10.13.0.35.")
    return tuple(int(p) for p in text.split("."))


def runtime_tensorrt_version(env: Mapping[str, str] | None = None,
                             lib_dirs: tuple[str, ...] = LIBNVINFER_DIRS) -> tuple[str, str] | None:
    """(version, where it was read) of the TensorRT this process would run plans with: the ``tensorrt`` module,
    an NGC container's ``TENSORRT_VERSION`` / ``TRT_VERSION``, or the newest ``libnvinfer.so.X.Y.Z`` in the
    usual library folders (what the Triton container's TensorRT backend loads); None if none is found."""
    from export.trt import tensorrt_importable

    if tensorrt_importable():
        return str(tensorrt.__version__), "the tensorrt Python module"
    variables: Mapping[str, str] = os.environ if env is None else env
    for key in VERSION_ENV:
        value = variables.get(key, "").strip()
        if _VERSION.match(value):
            return value, f"${key}"
    found = []
    for folder in lib_dirs:
        for lib in glob.glob(os.path.join(folder, "libnvinfer.so.*")):
            suffix = lib.rsplit("libnvinfer.so.", 1)[1]
            if _VERSION.match(suffix):
                found.append((parse_version(suffix), lib))
    if found:
        version, lib = max(found)
        return ".".join(map(str, version)), lib
    return None


def check_tensorrt_version(manifest: EngineManifest, runtime: str, where: str) -> None:
    """Refuse plans the ``runtime`` TensorRT cannot load: a plan needs the TensorRT version that built it
    (compared on the components both versions give), a version-compatible plan a runtime at least as new."""
    built, have = parse_version(manifest.tensorrt_version), parse_version(runtime)
    n = min(len(built), len(have))
    if manifest.version_compatible:
        if have[:n] < built[:n]:
            raise ExportError(f"the plans are version-compatible engines built by TensorRT {manifest.tensorrt_version}"
                              f", but {where} is the older TensorRT {runtime}; serve them with a Triton release "
                              "whose TensorRT is at least as new.")
        return
    if built[:n] != have[:n]:
        raise ExportError(f"the plans were built by TensorRT {manifest.tensorrt_version} but {where} is TensorRT "
                          f"{runtime}: a plan loads only on the TensorRT that built it. Rebuild them in the NGC "
                          "TensorRT container of the Triton release you serve with (docs/serving.md), or build "
                          "version-compatible engines (`spai export --version-compatible`).")
