"""Generate Triton model repositories (config.pbtxt + model files) from :mod:`spai.model.specs`.

Three models: ``spai`` (Python/BLS entry point taking encoded image bytes), ``spai_patch_encoder`` and
``spai_aggregator``. Variants of the two graphs: ``trt`` (``tensorrt_plan``, GPU, production), ``onnx``
(``onnxruntime_onnx``, full Triton containers) and ``python-ort`` (Python backend running ONNX Runtime, the
only kind the tritonserver bundled in nvidia-pytriton can load), all built from an export directory
(:func:`build_repository`); and ``python-torch`` (Python backend running the checkpoint itself in PyTorch, KIND_GPU
with fp16/bf16 autocast or KIND_CPU in fp32: no export, no engines; :func:`build_torch_repository`). Tensor names,
dtypes and shapes come from ``spai.model.specs`` only, so configs cannot drift from the exported graphs. The ``spai``
model's code is the one file ``serving/triton_models/spai/1/model.py``; generated repositories copy it.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import Any

from export.manifest import (
    EngineManifest,
    check_tensorrt_version,
    read_manifest,
    runtime_tensorrt_version,
)
from serving.bls import DEFAULT_TRIM_HEAP_MB, EntrySettings
from serving.models.torch_graph import PRECISIONS
from spai.errors import ConfigError, ExportError, ServingError
from spai.infer.prepare import SERVING_LIMITS
from spai.infer.routes import ORT_SERVED, served_ort_route
from spai.infer.runners import CPU_CHUNKS
from spai.model.calibration import calibration_from_export
from spai.model.specs import (
    AGGREGATOR_FILE,
    ATTENTION,
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_IMAGES,
    DEFAULT_MAX_PATCHES,
    DEFAULT_OPT_BATCH,
    ENCODER_FILES,
    MANIFEST_FILE,
    PATCH_FEATURES,
    PATCHES,
    ModelSpec,
    TensorSpec,
    aggregator_spec,
    patch_encoder_spec,
    trt_profile,
)

log = logging.getLogger(__name__)

VARIANTS = ("trt", "onnx", "python-ort")  # built from an export directory (build_repository)
TORCH_VARIANT = "python-torch"  # built from a checkpoint (build_torch_repository)
ALL_VARIANTS = (*VARIANTS, TORCH_VARIANT)
DEVICES = ("cpu", "gpu")  # python-torch: KIND_CPU or KIND_GPU graph models
TORCH_PRECISIONS = PRECISIONS  # python-torch: fp16 / bf16 = torch.autocast on a GPU
# --precision per variant: python-ort serves the fp32 or the int8 encoder graph (auto: the route that passed, by the
# export's route evidence, spai.infer.routes.served_ort_route); trt's engines carry the precision `spai export` built.
VARIANT_PRECISIONS = {"trt": (), "onnx": ("fp32",), "python-ort": ORT_SERVED, TORCH_VARIANT: TORCH_PRECISIONS}
TORCH_CHECKPOINT = "checkpoint.pth"  # python-torch: the repository root's one copy, read by both graph models
ENTRY, ENCODER, AGGREGATOR = "spai", "spai_patch_encoder", "spai_aggregator"
PRODUCTION_FEATURE_DIM = 1168  # spai-fusion-b16 (the checked-in serving/triton_models/ layout)
MODELS_DIR = Path(__file__).resolve().parent / "models"
CHECKED_IN = Path(__file__).resolve().parent / "triton_models"
ENTRY_MODEL_FILE = CHECKED_IN / ENTRY / "1" / "model.py"  # the one source of the `spai` model
# Aggregator output (B x L, attention mean over heads) used for heatmaps; older exports may lack it.
ATTENTION_OUTPUT = aggregator_spec(1).output(ATTENTION)
ENTRY_INPUTS = (TensorSpec("image", "object", (1,)), TensorSpec("return_patch_scores", "bool", (1,)),
                TensorSpec("operating_point", "object", (1,)))
ENTRY_OUTPUTS = (TensorSpec("probability", "float32", (1,)), TensorSpec("logit", "float32", (1,)),
                 TensorSpec("decision", "bool", (1,)), TensorSpec("operating_point_name", "object", (1,)),
                 TensorSpec("num_patches", "int32", (1,)), TensorSpec("patch_attention", "float32", (-1,)))
OPTIONAL_INPUTS = {"return_patch_scores", "operating_point"}


@dataclass(frozen=True)
class Tuning:
    """How a repository keeps its models busy: instances, dynamic batching, BLS calls in flight, threads.

    ``in_flight`` (K): encoder requests one execute of ``spai`` keeps pending (BLS ``async_exec``), so that
    cutting the next chunk overlaps the encoder; 1 = one at a time. ``*_threads``: ONNX Runtime intra-op and
    OpenMP/BLAS threads of each Python-backend instance (0: the cores it may use, shared among the model's
    instances; :mod:`serving.instance`). ``encoder_preferred_batch``: the encoder's dynamic batcher's
    ``preferred_batch_size`` (empty: none). ``encoder_ort_batch`` (python-ort, python-torch): patches per ONNX
    Runtime or PyTorch call, whatever the batcher merges (0: max_batch_size); it bounds the encoder's memory.
    ``entry_trim_heap_mb``: each `spai` instance calls malloc_trim after every this many MiB of decoded pixels
    (0: never; :class:`serving.instance.HeapTrimmer`). ``entry_max_batch``: requests the `spai` model's dynamic batcher
    merges into one execute, which decodes them all before it cuts: it bounds each instance's working set, and so
    its heap's high-water mark (docs/reliability.md, "Memory over time"). Defaults per variant:
    :data:`TUNING` (docs/serving.md says why).
    """

    entry_instances: int
    encoder_instances: int
    aggregator_instances: int
    in_flight: int
    entry_max_batch: int = 4
    encoder_preferred_batch: tuple[int, ...] = ()
    entry_queue_delay_us: int = 2000
    encoder_queue_delay_us: int = 1000
    aggregator_queue_delay_us: int = 1000
    entry_threads: int = 1
    encoder_threads: int = 0
    aggregator_threads: int = 1
    encoder_ort_batch: int = 32
    entry_trim_heap_mb: int = DEFAULT_TRIM_HEAP_MB

    def __post_init__(self) -> None:
        for name in ("entry_instances", "encoder_instances", "aggregator_instances", "in_flight", "entry_max_batch",
                     "entry_threads"):
            if getattr(self, name) < 1:
                raise ServingError(f"{name.replace('_', '-')} must be at least 1, not {getattr(self, name)}.")
        for name in ("entry_queue_delay_us", "encoder_queue_delay_us", "aggregator_queue_delay_us",
                     "encoder_threads", "aggregator_threads", "encoder_ort_batch",
                     "entry_trim_heap_mb"):
            if getattr(self, name) < 0:
                raise ServingError(f"{name.replace('_', '-')} must not be negative, not {getattr(self, name)}.")
        if any(b < 1 for b in self.encoder_preferred_batch):
            raise ServingError(f"preferred batch sizes must be positive: {self.encoder_preferred_batch}.")


# python-ort: measured on 2 CPU cores (docs/serving.md, "Throughput"); trt: for one GPU, where decode and cutting
# (about 2,000 patches/s per core) must feed an encoder that takes several thousand patches/s.
TUNING = {
    "python-ort": Tuning(entry_instances=2, encoder_instances=1, aggregator_instances=1, in_flight=2),
    "onnx": Tuning(entry_instances=2, encoder_instances=1, aggregator_instances=1, in_flight=2),
    "trt": Tuning(entry_instances=4, encoder_instances=2, aggregator_instances=1, in_flight=4,
                  encoder_preferred_batch=(DEFAULT_OPT_BATCH,), encoder_queue_delay_us=500),
    TORCH_VARIANT: Tuning(entry_instances=2, encoder_instances=1, aggregator_instances=1, in_flight=2),  # KIND_CPU
}
# python-torch on a GPU (--device gpu): the trt defaults, each torch call as large as the batcher merges
TORCH_GPU_TUNING = replace(TUNING["trt"], encoder_ort_batch=0)


def default_tuning(variant: str, device: str = "cpu") -> Tuning:
    """The variant's default :class:`Tuning` (python-torch: per ``device``)."""
    return TORCH_GPU_TUNING if variant == TORCH_VARIANT and device == "gpu" else TUNING[variant]


@dataclass(frozen=True)
class RepositoryOptions:
    """Everything a generated repository depends on besides the model files (``tuning``: None = the variant's
    :func:`default_tuning`)."""

    variant: str
    feature_dim: int
    attention: bool = False  # aggregator exposes ATTENTION_OUTPUT
    max_batch: int = DEFAULT_MAX_BATCH  # encoder engine profile maximum (patches)
    max_images: int = DEFAULT_MAX_IMAGES  # aggregator engine profile maximum (images)
    tuning: Tuning | None = None
    settings: EntrySettings = field(default_factory=lambda: EntrySettings(
        limits=SERVING_LIMITS, aggregator_batch=DEFAULT_MAX_IMAGES))
    # trt: the engines' own (min, opt, max) profiles by graph, from their engine.json (None: the spec defaults)
    profiles: dict[str, dict[str, tuple[tuple[int, ...], ...]]] | None = None
    device: str = "cpu"  # python-torch: where the graph models run (DEVICES)
    # the encoder's precision: python-torch fp32 | fp16 | bf16 (GPU only), python-ort fp32 | int8 (auto is
    # resolved before: build_repository)
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if self.variant not in ALL_VARIANTS:
            raise ServingError(f"unknown variant {self.variant!r}; choose one of {', '.join(ALL_VARIANTS)}.")
        if self.device not in DEVICES:
            raise ServingError(f"device {self.device!r}: choose one of {', '.join(DEVICES)}.")
        allowed = [p for p in VARIANT_PRECISIONS[self.variant] if p != "auto"]
        if self.precision != "fp32" and self.precision not in allowed:
            fix = (f"choose one of {', '.join(allowed)}" if allowed else
                   "its engines' precision is the one `spai export` built (engine.json)")
            raise ServingError(f"precision {self.precision!r} is not a precision of --variant {self.variant}: "
                               f"{fix}.")
        if self.variant == TORCH_VARIANT and self.device == "cpu" and self.precision != "fp32":
            raise ServingError(f"--precision {self.precision} is torch.autocast on a GPU; CPU graph models run "
                               "fp32: pass --device gpu, or --precision fp32.")
        if self.tuning is None:
            object.__setattr__(self, "tuning", default_tuning(self.variant, self.device))


def tuning_with(variant: str, device: str = "cpu", **changes: object) -> Tuning:
    """The variant's default :class:`Tuning` (python-torch: on ``device``) with ``changes`` (None values are left
    at the default)."""
    return replace(default_tuning(variant, device), **{k: v for k, v in changes.items() if v is not None})


def production_options() -> RepositoryOptions:
    """Options of the checked-in TensorRT layout in serving/triton_models/."""
    return RepositoryOptions(variant="trt", feature_dim=PRODUCTION_FEATURE_DIM, attention=True)


# ---- config.pbtxt: Triton's own ModelConfig schema, printed and parsed by google.protobuf.text_format ----------

_BACKEND = {"trt": {"platform": "tensorrt_plan"}, "onnx": {"platform": "onnxruntime_onnx"},
            "python-ort": {"backend": "python"}, TORCH_VARIANT: {"backend": "python"}}
_BLOCKS = {"model_warmup"}  # config fields printed as indented blocks (the others: one line per value)


def model_config_pb2() -> ModuleType:
    """Triton's ModelConfig schema (``tritonclient.grpc.model_config_pb2``), which builds and reads every config."""
    try:
        from tritonclient.grpc import model_config_pb2 as schema
    except ImportError as e:
        raise ServingError(f"Triton configs are built and read with tritonclient's ModelConfig schema, which cannot be "
                           f"imported here ({e}): pip install 'tritonclient[grpc]' protobuf (both are in the serve "
                           "and triton extras of spai-deploy).") from None
    return schema


def config_text(config: Any) -> str:
    """A ModelConfig as config.pbtxt (``text_format``): fields in the schema's order, each value on a line of its
    own (one line per tensor, instance group and parameter, sorted by key) except warm-ups (indented blocks)."""
    from google.protobuf import text_format

    present = {fd.name for fd, _ in config.ListFields()}
    parts = [text_format.MessageToString(type(config)(**{fd.name: part}), as_one_line=fd.name not in _BLOCKS)
             for fd in config.DESCRIPTOR.fields if fd.name in present for part in _field_parts(config, fd)]
    return "\n".join(p.rstrip("\n") for p in parts) + "\n"


def _field_parts(config: Any, fd: Any) -> list[Any]:
    """A set field's values, one per line: each map entry, each element of a repeated field, or the one value."""
    from google.protobuf.message import Message

    value = getattr(config, fd.name)
    if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
        return [{key: value[key]} for key in sorted(value)]
    if isinstance(value, (str, bytes, int, float, Message)):
        return [value]
    return [[item] for item in value]


def read_config(path: str | Path) -> Any:
    """A config.pbtxt parsed into Triton's ModelConfig; :class:`ServingError` (how to fix) where it is none."""
    from google.protobuf import text_format

    schema = model_config_pb2()
    try:
        return text_format.Parse(Path(path).read_text(), schema.ModelConfig())
    except text_format.ParseError as e:
        raise ServingError(f"{path} is not a Triton model config ({e}); rebuild the repository with "
                           "`spai repository`.") from e


def _model_config(name: str, variant: str, max_batch: int, inputs: tuple[TensorSpec, ...],
                  outputs: tuple[TensorSpec, ...], optional: AbstractSet[str] = frozenset()) -> Any:
    """A ModelConfig with the model's name, platform or backend, max_batch_size and tensors."""
    schema = model_config_pb2()
    config = schema.ModelConfig(name=name, max_batch_size=max_batch, **_BACKEND[variant])
    for t in inputs:
        config.input.add(name=t.name, data_type=schema.DataType.Value(t.triton_dtype), dims=t.shape,
                         optional=t.name in optional)
    for t in outputs:
        config.output.add(name=t.name, data_type=schema.DataType.Value(t.triton_dtype), dims=t.shape)
    return config


def _schedule(config: Any, count: int, gpu: bool, queue_delay_us: int, preferred: tuple[int, ...] = ()) -> None:
    """Add the dynamic batcher and the instance group (``count`` instances, KIND_GPU or KIND_CPU) to ``config``."""
    kind = model_config_pb2().ModelInstanceGroup.Kind
    config.dynamic_batching.SetInParent()  # present even without a delay: dynamic batching on
    config.dynamic_batching.preferred_batch_size.extend(preferred)
    config.dynamic_batching.max_queue_delay_microseconds = queue_delay_us
    config.instance_group.add(count=count, kind=kind.Value("KIND_GPU" if gpu else "KIND_CPU"))


def _parameters(config: Any, params: dict[str, str]) -> None:
    """Add string ``parameters`` to ``config``."""
    for key, value in params.items():
        config.parameters[key].string_value = value


def _on_gpu(variant: str, device: str) -> bool:
    """Whether the variant's graph models run KIND_GPU."""
    return variant == "trt" or (variant == TORCH_VARIANT and device == "gpu")


def profile(spec: ModelSpec, opts: RepositoryOptions) -> dict[str, tuple[tuple[int, ...], ...]]:
    """The engine's (min, opt, max) input shapes: the manifest's where built from engines, else
    spai.model.specs.trt_profile of the options. max_batch_size = max[0]; the warm-up runs the opt shapes."""
    if opts.profiles is not None:
        return opts.profiles[spec.name]
    return trt_profile(spec, max_batch=opts.max_batch, max_patches=opts.settings.limits.max_patches,
                       max_images=opts.max_images)


def _preferred_batch(t: Tuning, opts: RepositoryOptions, shapes: dict[str, tuple[tuple[int, ...], ...]]
                     ) -> tuple[int, ...]:
    """The encoder's preferred batch sizes: the tuning's; for trt engines by default the engine's own opt batch
    (what TensorRT tuned its kernels for: the spec's DEFAULT_OPT_BATCH, or an engine built with --opt-batch)."""
    if opts.variant == "trt" and t.encoder_preferred_batch == TUNING["trt"].encoder_preferred_batch:
        return (next(iter(shapes.values()))[1][0],)
    return t.encoder_preferred_batch


def _warmup(config: Any, spec: ModelSpec, opt: dict[str, tuple[int, ...]]) -> None:
    """Add one warm-up request at the profile's opt shapes to ``config``."""
    schema = model_config_pb2()
    warmup = config.model_warmup.add(name=f"warmup_{spec.name}", batch_size=next(iter(opt.values()))[0])
    for t in spec.inputs:
        warmup.inputs[t.name].CopyFrom(schema.ModelWarmup.Input(
            data_type=schema.DataType.Value(t.triton_dtype), dims=opt[t.name][1:], random_data=True))


def graph_config(spec: ModelSpec, name: str, opts: RepositoryOptions, outputs: tuple[TensorSpec, ...]) -> str:
    """config.pbtxt of one exported graph (encoder or aggregator) for ``opts.variant``."""
    shapes = profile(spec, opts)
    max_batch = next(iter(shapes.values()))[2][0]
    t = opts.tuning or default_tuning(opts.variant, opts.device)  # always set by __post_init__
    encoder = name == ENCODER
    instances, threads = ((t.encoder_instances, t.encoder_threads) if encoder
                          else (t.aggregator_instances, t.aggregator_threads))
    delay = t.encoder_queue_delay_us if encoder else t.aggregator_queue_delay_us
    preferred = tuple(b for b in _preferred_batch(t, opts, shapes) if b <= max_batch) if encoder else ()
    config = _model_config(name, opts.variant, max_batch, spec.inputs, outputs)
    _schedule(config, instances, _on_gpu(opts.variant, opts.device), delay, preferred)
    _parameters(config, _graph_parameters(opts, t, encoder, threads, max_batch))
    if opts.variant == "trt":
        _warmup(config, spec, {k: v[1] for k, v in shapes.items()})
    return config_text(config)


def _graph_parameters(opts: RepositoryOptions, t: Tuning, encoder: bool, threads: int, max_batch: int
                      ) -> dict[str, str]:
    """A graph model's string parameters for ``opts.variant`` (trt: none)."""
    if opts.variant == "python-ort":
        return {"onnx_file": "model.onnx", "threads": str(threads),
                **(_ort_encoder_parameters(opts, t, max_batch) if encoder else {})}
    if opts.variant == "onnx":
        return {"intra_op_thread_count": str(threads)} if threads else {}
    if opts.variant == TORCH_VARIANT:
        calls = {"max_torch_batch": str(min(t.encoder_ort_batch, max_batch))} if encoder and t.encoder_ort_batch else {}
        return {"graph": "patch_encoder" if encoder else "aggregator", "checkpoint": f"../{TORCH_CHECKPOINT}",
                "precision": opts.precision, "threads": str(threads), **calls}
    return {}


def _ort_encoder_parameters(opts: RepositoryOptions, t: Tuning, max_batch: int) -> dict[str, str]:
    """The python-ort encoder's precision and rows per ONNX Runtime call: the int8 graph quantises its
    activations per call, so it runs the in-process route's chunk (one patch a call) to score exactly as that
    route does, whatever the batcher merges."""
    rows = CPU_CHUNKS[("ort", "int8")] if opts.precision == "int8" else min(t.encoder_ort_batch, max_batch)
    return {"precision": opts.precision, **({"max_ort_batch": str(rows)} if rows else {})}


def encoder_config(opts: RepositoryOptions) -> str:
    """``spai_patch_encoder``: patches (3 x 224 x 224) -> patch_features (D)."""
    spec = patch_encoder_spec(opts.feature_dim)
    return graph_config(spec, ENCODER, opts, spec.outputs)


def aggregator_outputs(spec: ModelSpec, attention: bool) -> tuple[TensorSpec, ...]:
    """The spec's outputs; without ``attention`` (an export that lacks it) the attention output is left out."""
    return spec.outputs if attention else tuple(t for t in spec.outputs if t.name != ATTENTION_OUTPUT.name)


def aggregator_config(opts: RepositoryOptions) -> str:
    """``spai_aggregator``: patch_features (L x D) + patch_mask (L) -> logits (1) [+ attention (L)]."""
    spec = aggregator_spec(opts.feature_dim)
    return graph_config(spec, AGGREGATOR, opts, aggregator_outputs(spec, opts.attention))


def entry_config(opts: RepositoryOptions) -> str:
    """``spai``: encoded image bytes [+ operating_point] -> probability, logit, decision, operating_point_name,
    num_patches [, patch_attention] (Python BLS); a calibrated model's calibration rides in its parameters."""
    s, t = opts.settings, opts.tuning or default_tuning(opts.variant, opts.device)  # always set by __post_init__
    params = replace(s, encoder_model=ENCODER, aggregator_model=AGGREGATOR, attention=opts.attention,
                     encoder_chunk=min(s.encoder_chunk, opts.max_batch),
                     aggregator_batch=min(s.aggregator_batch, opts.max_images), in_flight=t.in_flight,
                     threads=t.entry_threads, trim_heap_mb=t.entry_trim_heap_mb).to_parameters()
    config = _model_config(ENTRY, "python-ort", t.entry_max_batch, ENTRY_INPUTS, ENTRY_OUTPUTS, OPTIONAL_INPUTS)
    _schedule(config, t.entry_instances, False, t.entry_queue_delay_us)  # decoding and cutting: CPU instances
    _parameters(config, params)
    return config_text(config)


def write_configs(out: str | Path, opts: RepositoryOptions) -> Path:
    """Write the three config.pbtxt files and the Python model files (no graph files) under ``out``."""
    root = Path(out)
    files = {ENTRY: entry_config(opts), ENCODER: encoder_config(opts), AGGREGATOR: aggregator_config(opts)}
    for name, text in files.items():
        (root / name / "1").mkdir(parents=True, exist_ok=True)
        (root / name / "config.pbtxt").write_text(text)
    entry_model = root / ENTRY / "1" / "model.py"
    if entry_model.resolve() != ENTRY_MODEL_FILE.resolve():  # --checked-in writes beside the source itself
        shutil.copyfile(ENTRY_MODEL_FILE, entry_model)
    graph_model = {"python-ort": "ort_model.py", TORCH_VARIANT: "torch_model.py"}.get(opts.variant)
    if graph_model:
        for name in (ENCODER, AGGREGATOR):
            shutil.copyfile(MODELS_DIR / graph_model, root / name / "1" / "model.py")
    return root


GRAPH_FILES = {"trt": ("{stem}.plan", "model.plan"), "onnx": ("{stem}.onnx", "model.onnx"),
               "python-ort": ("{stem}.onnx", "model.onnx")}


def onnx_feature_dim(path: Path, *, required: bool = True) -> tuple[int, bool] | None:
    """(D, has attention output) read from an exported aggregator.onnx; None where the onnx package is absent and
    the caller can do without it (``required=False``: the trt variant, whose engine.json says both)."""
    try:
        import onnx
    except ImportError:
        if not required:
            return None
        raise ServingError(f"reading {path} (its feature dimension and whether it has the {ATTENTION_OUTPUT.name} "
                           "output) needs the onnx package: pip install onnx (it is in the serve extra).") from None
    model = onnx.load(str(path), load_external_data=False)
    dim = model.graph.input[0].type.tensor_type.shape.dim[-1].dim_value
    names = {o.name for o in model.graph.output}
    if not dim:
        raise ServingError(f"{path}: the last dimension of the first input is not static; pass --feature-dim.")
    return int(dim), ATTENTION_OUTPUT.name in names


def build_repository(artifacts: str | Path, variant: str, out: str | Path, feature_dim: int | None = None,
                     attention: bool | None = None, tensorrt_version: str | None = None, precision: str = "fp32",
                     **overrides) -> Path:
    """Assemble a ready repository in ``out`` from an export directory (patch_encoder/aggregator .onnx/.plan).

    D and the attention output are read from ``engine.json`` for ``trt`` (checked against ``aggregator.onnx`` where
    the onnx package can read it; the Triton image has none), else from ``aggregator.onnx``; the model's
    calibration from the export's ``calibration.json`` (:func:`spai.model.calibration.calibration_from_export`);
    ``overrides`` go to :class:`RepositoryOptions`. ``trt`` reads the engines' ``engine.json``
    (:func:`trt_options`): configs follow the profiles the plans were built with, and plans another TensorRT built
    are refused. ``precision`` (python-ort): the encoder graph to serve, fp32, int8 or auto
    (:func:`spai.infer.routes.served_ort_route`: int8 only where it passed its gate for this export on this CPU;
    the route served and why are logged). Returns ``out``.
    """
    art = Path(artifacts)
    if variant == TORCH_VARIANT:
        raise ServingError(f"the {TORCH_VARIANT} variant runs a checkpoint, not an export directory: `spai "
                           f"repository --variant {TORCH_VARIANT} --checkpoint CKPT -o REPO`.")
    src_pattern, dst_name = GRAPH_FILES.get(variant, ("", ""))
    RepositoryOptions(variant=variant, feature_dim=1)  # validates the variant
    if variant == "python-ort":
        precision = _served_precision(art, precision)
    RepositoryOptions(variant=variant, feature_dim=1, precision=precision)  # validates the precision
    sources = {m: art / src_pattern.format(stem=stem) for m, stem in ((ENCODER, "patch_encoder"),
                                                                        (AGGREGATOR, "aggregator"))}
    if precision == "int8":
        sources[ENCODER] = art / ENCODER_FILES["int8"]
    manifest = None
    if variant == "trt":
        manifest = engine_manifest(art, tensorrt_version)
        sources = {ENCODER: art / manifest.engines["patch_encoder"].file,
                   AGGREGATOR: art / manifest.engines["aggregator"].file}
    missing = [str(p) for p in sources.values() if not p.is_file()]
    if missing:
        raise ServingError(f"missing export outputs: {', '.join(missing)}; run `spai export CKPT -o {art}` first, "
                           "or pick another --variant.")
    feature_dim, attention = _graph_facts(art, manifest, feature_dim, attention)
    base = RepositoryOptions(variant=variant, feature_dim=feature_dim, attention=attention, precision=precision,
                             **overrides)
    base = dataclasses.replace(base, settings=dataclasses.replace(base.settings,
                                                                  calibration=calibration_from_export(art)))
    opts = trt_options(base, manifest) if manifest is not None else base
    root = write_configs(out, opts)
    for model, src in sources.items():
        shutil.copyfile(src, root / model / "1" / dst_name)
    if manifest is not None:
        write_engine_records(root, art, manifest)
    return root


def _served_precision(art: Path, precision: str) -> str:
    """The python-ort encoder's precision for ``precision`` fp32 | int8 | auto, by the export's route evidence."""
    if precision not in ORT_SERVED:
        raise ServingError(f"--variant python-ort serves --precision {', '.join(ORT_SERVED)}, not {precision!r}.")
    try:
        choice = served_ort_route(art, precision)
    except ConfigError as e:
        raise ServingError(str(e)) from e
    log.info(choice.reason)
    return choice.precision


def _graph_facts(art: Path, manifest: EngineManifest | None, feature_dim: int | None,
                 attention: bool | None) -> tuple[int, bool]:
    """(D, has the attention output): given, else from the engines' engine.json (trt) or ``aggregator.onnx``.
    engine.json must agree with both, and with aggregator.onnx where the onnx package can read it (the Triton
    image has none: there engine.json alone answers)."""
    graph = art / AGGREGATOR_FILE
    read = graph.is_file() and (manifest is not None or feature_dim is None or attention is None)
    facts = onnx_feature_dim(graph, required=manifest is None) if read else None
    if manifest is None:
        feature_dim = feature_dim or (facts[0] if facts else None)
        if feature_dim is None:
            raise ServingError(f"cannot infer the feature dimension: no aggregator.onnx in {art}; pass --feature-dim.")
        return feature_dim, bool(facts[1] if attention is None and facts else attention)
    if feature_dim is not None and feature_dim != manifest.feature_dim:
        raise ServingError(f"--feature-dim {feature_dim} disagrees with the engines' feature_dim "
                           f"{manifest.feature_dim} (engine.json in {art}).")
    recorded, outputs = manifest.aggregator_attention(), list(manifest.engines["aggregator"].outputs)
    if facts is not None:
        if facts[0] != manifest.feature_dim:
            raise ServingError(f"{art}: aggregator.onnx has feature dimension {facts[0]} but engine.json says "
                               f"{manifest.feature_dim}; the plans were built from another export.")
        if recorded is not None and facts[1] != recorded:
            raise ServingError(f"{art}: aggregator.onnx {'has' if facts[1] else 'lacks'} the "
                               f"{ATTENTION_OUTPUT.name} output but engine.json's aggregator outputs are {outputs}; "
                               "the plans were built from another export.")
        recorded = facts[1] if recorded is None else recorded
    if attention is None and recorded is None:
        why = ("the onnx package that would read aggregator.onnx is not installed here (the Triton image has none)"
               if graph.is_file() else "there is no aggregator.onnx beside it")
        raise ServingError(f"{art / MANIFEST_FILE} does not record the aggregator engine's outputs (an older `spai "
                           f"export` wrote it) and {why}, so whether the engine has the {ATTENTION_OUTPUT.name} "
                           f'output is unknown. Add "outputs": ["logits", "attention"] (or ["logits"]: the outputs '
                           "of the aggregator.onnx the plan was built from) to its engines.aggregator entry, run "
                           "`spai repository` where the onnx package is installed, or rebuild the engines with "
                           "`spai export`.")
    return manifest.feature_dim, bool(recorded if attention is None else attention)


# ---- the trt variant: configs from the engines' manifest (export/manifest.py) -------------------------------

SERVER_ARGS_FILE = "tritonserver.args"  # extra tritonserver arguments this repository needs, one per line
VERSION_COMPATIBLE_ARG = "--backend-config=tensorrt,version-compatible=true"


def engine_manifest(art: Path, tensorrt_version: str | None = None) -> EngineManifest:
    """The export directory's ``engine.json``, checked (shapes, plans on disk) and, against ``tensorrt_version``
    or else the TensorRT this machine / container has (when it can be read), checked for loadability."""
    try:
        manifest = read_manifest(art)
        if tensorrt_version:
            check_tensorrt_version(manifest, tensorrt_version, "the serving TensorRT (--tensorrt-version)")
        elif (found := runtime_tensorrt_version()) is not None:
            check_tensorrt_version(manifest, found[0], f"this machine's TensorRT ({found[1]}; pass "
                                                       "--tensorrt-version of the serving container to check against "
                                                       "that instead)")
    except ExportError as e:
        raise ServingError(str(e)) from e
    return manifest


def trt_options(opts: RepositoryOptions, manifest: EngineManifest) -> RepositoryOptions:
    """``opts`` following the engines: each model's max_batch_size is its profile's largest batch, warm-up uses the
    opt shapes, the ``spai`` model sends encoder chunks of the encoder's opt batch and aggregator groups of its
    largest image count, pads smaller ones up to the profiles' minimums, and refuses images over its largest patch
    count. Settings asked for beyond the profiles
    are refused (naming both values)."""
    enc, agg = manifest.engines["patch_encoder"], manifest.engines["aggregator"]
    enc_max, enc_opt = enc.profile[PATCHES][2][0], enc.profile[PATCHES][1][0]
    images, patches = agg.profile[PATCH_FEATURES][2][:2]
    s = opts.settings
    asked = s.limits.max_patches  # the default follows the profile; an explicit larger value is refused
    if asked is not None and asked != DEFAULT_MAX_PATCHES and asked > patches:
        raise ServingError(f"max_patches {asked} exceeds the aggregator engine's largest patch count "
                           f"{patches} (its profile in engine.json); rebuild it with --max-patches.")
    settings = dataclasses.replace(s, encoder_chunk=enc_opt, aggregator_batch=images,
                                   limits=dataclasses.replace(s.limits, max_patches=patches),
                                   encoder_min_batch=enc.profile[PATCHES][0][0],
                                   aggregator_min_images=agg.profile[PATCH_FEATURES][0][0],
                                   aggregator_min_patches=agg.profile[PATCH_FEATURES][0][1])
    profiles = {"patch_encoder": enc.profile, "aggregator": agg.profile}
    return dataclasses.replace(opts, max_batch=enc_max, max_images=images, settings=settings, profiles=profiles)


def write_engine_records(root: Path, art: Path, manifest: EngineManifest) -> None:
    """Copy ``engine.json`` to the repository root (Triton reads only model folders) and, for version-compatible
    plans, ``tritonserver.args`` with the backend option that loads them
    (serving/deploy/tritonserver.py passes it to tritonserver)."""
    shutil.copyfile(art / MANIFEST_FILE, root / MANIFEST_FILE)
    args_file = root / SERVER_ARGS_FILE
    if manifest.version_compatible:
        args_file.write_text(VERSION_COMPATIBLE_ARG + "\n")
    else:
        args_file.unlink(missing_ok=True)


# ---- the python-torch variant: the checkpoint itself, in PyTorch (serving/models/torch_model.py) ----------------

def build_torch_repository(checkpoint: str | Path, out: str | Path, device: str = "cpu", precision: str = "fp32",
                           **overrides) -> Path:
    """Assemble a ``python-torch`` repository in ``out`` for ``checkpoint`` (any format ``spai.create_model``
    reads), copied once to the repository root and read by both graph models, so that they hold the same weights.

    D and the attention output come from the model, the calibration from the checkpoint (as
    ``model.score_images`` applies it); ``device`` gpu gives KIND_GPU graph models under ``torch.autocast`` in
    ``precision`` (fp16 / bf16; fp32: none), cpu KIND_CPU ones in fp32. ``overrides`` go to
    :class:`RepositoryOptions`. Returns ``out``.
    """
    import spai

    source = Path(checkpoint)
    base = RepositoryOptions(variant=TORCH_VARIANT, feature_dim=1, device=device, precision=precision, **overrides)
    model = spai.create_model(checkpoint=source)  # CheckpointError (how to fix) for a missing or bad file
    opts = dataclasses.replace(base, feature_dim=int(model.feature_dim), attention=True,
                               settings=dataclasses.replace(base.settings, calibration=model.calibration))
    root = write_configs(out, opts)
    target = root / TORCH_CHECKPOINT
    if not (target.exists() and target.samefile(source)):  # rebuilding a repository from its own copy
        shutil.copyfile(source, target)
    return root
