"""Generate Triton model repositories (config.pbtxt + model files) from :mod:`spai.specs`.

Three models: ``spai`` (Python/BLS entry point taking encoded image bytes), ``spai_patch_encoder`` and
``spai_aggregator``. Variants of the two graphs: ``trt`` (``tensorrt_plan``, GPU, production), ``onnx``
(``onnxruntime_onnx``, full Triton containers) and ``python-ort`` (Python backend running ONNX Runtime, the
only kind the tritonserver bundled in nvidia-pytriton can load). Tensor names, dtypes and shapes come from
``spai.specs`` only, so configs cannot drift from the exported graphs. The ``spai`` model's code is the one file
``serving/triton_models/spai/1/model.py``; generated repositories copy it.
"""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

from export.manifest import (
    MANIFEST_NAME,
    EngineManifest,
    check_tensorrt_version,
    read_manifest,
    runtime_tensorrt_version,
)
from serving.bls import EntrySettings, calibration_parameters
from spai.errors import ExportError, ServingError
from spai.inference import SERVING_LIMITS, calibration_from_export
from spai.specs import (
    ATTENTION,
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_IMAGES,
    DEFAULT_MAX_PATCHES,
    PATCH_FEATURES,
    PATCHES,
    ModelSpec,
    TensorSpec,
    aggregator_spec,
    patch_encoder_spec,
    trt_profile,
)

VARIANTS = ("trt", "onnx", "python-ort")
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
    ``preferred_batch_size`` (empty: none). ``encoder_ort_batch`` (python-ort): patches per ONNX Runtime call,
    whatever the batcher merges (0: max_batch_size); it bounds the encoder's memory. ``entry_trim_heap_mb``:
    each `spai` instance calls malloc_trim after every this many MiB of decoded pixels (0: never;
    :class:`serving.instance.HeapTrimmer`). ``entry_max_batch``: requests the `spai` model's dynamic batcher
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
    entry_trim_heap_mb: int = 64

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
                  encoder_preferred_batch=(128, 256), encoder_queue_delay_us=500),
}


@dataclass(frozen=True)
class RepositoryOptions:
    """Everything a generated repository depends on besides the model files (``tuning``: None = the variant's
    :data:`TUNING`)."""

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

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ServingError(f"unknown variant {self.variant!r}; choose one of {', '.join(VARIANTS)}.")
        if self.tuning is None:
            object.__setattr__(self, "tuning", TUNING[self.variant])


def tuning_with(variant: str, **changes: object) -> Tuning:
    """The variant's default :class:`Tuning` with ``changes`` (None values are left at the default)."""
    return replace(TUNING[variant], **{k: v for k, v in changes.items() if v is not None})


def production_options() -> RepositoryOptions:
    """Options of the checked-in TensorRT layout in serving/triton_models/."""
    return RepositoryOptions(variant="trt", feature_dim=PRODUCTION_FEATURE_DIM, attention=True)


def _dims(shape: tuple[int, ...]) -> str:
    return "[ " + ", ".join(str(d) for d in shape) + " ]"


def _tensor_block(t: TensorSpec, optional: bool = False) -> str:
    lines = [f'    name: "{t.name}"', f"    data_type: {t.triton_dtype}", f"    dims: {_dims(t.shape)}"]
    if optional:
        lines.append("    optional: true")
    return "  {\n" + "\n".join(lines) + "\n  }"


def _io(kind: str, tensors: tuple[TensorSpec, ...], optional: set[str] = frozenset()) -> str:
    return f"{kind} [\n" + ",\n".join(_tensor_block(t, t.name in optional) for t in tensors) + "\n]"


def _parameters(params: dict[str, str]) -> str:
    return "\n".join(f'parameters {{ key: "{k}" value {{ string_value: "{v}" }} }}' for k, v in params.items())


def _header(name: str, variant: str, max_batch: int) -> str:
    kind = {"trt": 'platform: "tensorrt_plan"', "onnx": 'platform: "onnxruntime_onnx"',
            "python-ort": 'backend: "python"'}[variant]
    return f'name: "{name}"\n{kind}\nmax_batch_size: {max_batch}'


def _instances(variant: str, count: int) -> str:
    kind = "KIND_GPU" if variant == "trt" else "KIND_CPU"
    return f"instance_group [ {{ count: {count} kind: {kind} }} ]"


def _batching(queue_delay_us: int, preferred: tuple[int, ...] = ()) -> str:
    sizes = f"preferred_batch_size: {_dims(preferred)} " if preferred else ""
    return f"dynamic_batching {{ {sizes}max_queue_delay_microseconds: {queue_delay_us} }}"


def profile(spec: ModelSpec, opts: RepositoryOptions) -> dict[str, tuple[tuple[int, ...], ...]]:
    """The engine's (min, opt, max) input shapes: the manifest's where built from engines, else
    spai.specs.trt_profile of the options. max_batch_size = max[0]; the warm-up runs the opt shapes."""
    if opts.profiles is not None:
        return opts.profiles[spec.name]
    return trt_profile(spec, max_batch=opts.max_batch, max_patches=opts.settings.limits.max_patches,
                       max_images=opts.max_images)


def _warmup(spec: ModelSpec, opt: dict[str, tuple[int, ...]]) -> str:
    """One warm-up request at the profile's opt shapes."""
    blocks = []
    batch = next(iter(opt.values()))[0]
    for t in spec.inputs:
        shape = opt[t.name][1:]
        blocks.append(f'    inputs {{ key: "{t.name}" value {{ data_type: {t.triton_dtype} dims: {_dims(shape)} '
                      "random_data: true } }")
    return (f'model_warmup [\n  {{\n    name: "warmup_{spec.name}"\n    batch_size: {batch}\n'
            + "\n".join(blocks) + "\n  }\n]")


def graph_config(spec: ModelSpec, name: str, opts: RepositoryOptions, outputs: tuple[TensorSpec, ...]) -> str:
    """config.pbtxt of one exported graph (encoder or aggregator) for ``opts.variant``."""
    shapes = profile(spec, opts)
    max_batch = next(iter(shapes.values()))[2][0]
    t = opts.tuning
    encoder = name == ENCODER
    instances, threads = ((t.encoder_instances, t.encoder_threads) if encoder
                          else (t.aggregator_instances, t.aggregator_threads))
    delay = t.encoder_queue_delay_us if encoder else t.aggregator_queue_delay_us
    preferred = tuple(b for b in t.encoder_preferred_batch if b <= max_batch) if encoder else ()
    parts = [_header(name, opts.variant, max_batch), _io("input", spec.inputs), _io("output", outputs),
             _batching(delay, preferred), _instances(opts.variant, instances)]
    if opts.variant == "trt":
        parts.append(_warmup(spec, {k: v[1] for k, v in shapes.items()}))
    if opts.variant == "python-ort":
        calls = {"max_ort_batch": str(min(t.encoder_ort_batch, max_batch))} if encoder and t.encoder_ort_batch else {}
        parts.append(_parameters({"onnx_file": "model.onnx", "threads": str(threads), **calls}))
    if opts.variant == "onnx" and threads:
        parts.append(_parameters({"intra_op_thread_count": str(threads)}))
    return "\n".join(parts) + "\n"


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
    s = opts.settings
    params = {"encoder_model": ENCODER, "aggregator_model": AGGREGATOR, "aggregator_attention": str(opts.attention),
              "encoder_chunk": str(min(s.encoder_chunk, opts.max_batch)),
              "aggregator_batch": str(min(s.aggregator_batch, opts.max_images)), "max_bytes": str(s.limits.max_bytes),
              "max_pixels": str(s.limits.max_pixels), "max_patches": str(s.limits.max_patches),
              "patch_size": str(s.patch.size), "patch_stride": str(s.patch.stride),
              "minimum_patches": str(s.patch.minimum_patches), "in_flight": str(opts.tuning.in_flight),
              "threads": str(opts.tuning.entry_threads), "trim_heap_mb": str(opts.tuning.entry_trim_heap_mb),
              "encoder_min_batch": str(s.encoder_min_batch), "aggregator_min_images": str(s.aggregator_min_images),
              "aggregator_min_patches": str(s.aggregator_min_patches),
              **calibration_parameters(s.calibration)}
    parts = [_header(ENTRY, "python-ort", opts.tuning.entry_max_batch), _io("input", ENTRY_INPUTS, OPTIONAL_INPUTS),
             _io("output", ENTRY_OUTPUTS), _batching(opts.tuning.entry_queue_delay_us),
             f"instance_group [ {{ count: {opts.tuning.entry_instances} kind: KIND_CPU }} ]", _parameters(params)]
    return "\n".join(parts) + "\n"


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
    if opts.variant == "python-ort":
        for name in (ENCODER, AGGREGATOR):
            shutil.copyfile(MODELS_DIR / "ort_model.py", root / name / "1" / "model.py")
    return root


GRAPH_FILES = {"trt": ("{stem}.plan", "model.plan"), "onnx": ("{stem}.onnx", "model.onnx"),
               "python-ort": ("{stem}.onnx", "model.onnx")}


def onnx_feature_dim(path: Path) -> tuple[int, bool]:
    """(D, has attention output) read from an exported aggregator.onnx."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    dim = model.graph.input[0].type.tensor_type.shape.dim[-1].dim_value
    names = {o.name for o in model.graph.output}
    if not dim:
        raise ServingError(f"{path}: the last dimension of the first input is not static; pass --feature-dim.")
    return int(dim), ATTENTION_OUTPUT.name in names


def build_repository(artifacts: str | Path, variant: str, out: str | Path, feature_dim: int | None = None,
                     attention: bool | None = None, tensorrt_version: str | None = None, **overrides) -> Path:
    """Assemble a ready repository in ``out`` from an export directory (patch_encoder/aggregator .onnx/.plan).

    D and the attention output are read from ``aggregator.onnx`` when present, the model's calibration from the
    export's ``calibration.json`` (:func:`spai.inference.calibration_from_export`); ``overrides`` go to
    :class:`RepositoryOptions`. ``trt`` reads the engines' ``engine.json`` (:func:`trt_options`): configs follow
    the profiles the plans were built with, and plans another TensorRT built are refused. Returns ``out``.
    """
    art = Path(artifacts)
    src_pattern, dst_name = GRAPH_FILES.get(variant, ("", ""))
    RepositoryOptions(variant=variant, feature_dim=1)  # validates the variant
    sources = {m: art / src_pattern.format(stem=stem) for m, stem in ((ENCODER, "patch_encoder"),
                                                                        (AGGREGATOR, "aggregator"))}
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
    base = RepositoryOptions(variant=variant, feature_dim=feature_dim, attention=attention, **overrides)
    base = dataclasses.replace(base, settings=dataclasses.replace(base.settings,
                                                                  calibration=calibration_from_export(art)))
    opts = trt_options(base, manifest) if manifest is not None else base
    root = write_configs(out, opts)
    for model, src in sources.items():
        shutil.copyfile(src, root / model / "1" / dst_name)
    if manifest is not None:
        write_engine_records(root, art, manifest)
    return root


def _graph_facts(art: Path, manifest: EngineManifest | None, feature_dim: int | None,
                 attention: bool | None) -> tuple[int, bool]:
    """(D, has the attention output): given, else from ``aggregator.onnx``; a manifest's D must agree with both."""
    onnx_dim = None
    if (feature_dim is None or attention is None or manifest is not None) and (art / "aggregator.onnx").is_file():
        onnx_dim, has_attn = onnx_feature_dim(art / "aggregator.onnx")
        attention = has_attn if attention is None else attention
    if manifest is not None:
        if onnx_dim is not None and onnx_dim != manifest.feature_dim:
            raise ServingError(f"{art}: aggregator.onnx has feature dimension {onnx_dim} but engine.json says "
                               f"{manifest.feature_dim}; the plans were built from another export.")
        if feature_dim is not None and feature_dim != manifest.feature_dim:
            raise ServingError(f"--feature-dim {feature_dim} disagrees with the engines' feature_dim "
                               f"{manifest.feature_dim} (engine.json in {art}).")
        onnx_dim = manifest.feature_dim
    feature_dim = feature_dim or onnx_dim
    if feature_dim is None:
        raise ServingError(f"cannot infer the feature dimension: no aggregator.onnx in {art}; pass --feature-dim.")
    return feature_dim, bool(attention)


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
    shutil.copyfile(art / MANIFEST_NAME, root / MANIFEST_NAME)
    args_file = root / SERVER_ARGS_FILE
    if manifest.version_compatible:
        args_file.write_text(VERSION_COMPATIBLE_ARG + "\n")
    else:
        args_file.unlink(missing_ok=True)
