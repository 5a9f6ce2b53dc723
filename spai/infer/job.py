"""A scoring job, and the one way to open its scorer.

:class:`ScoringJob` says everything about how images are scored: which model (a checkpoint, else a named config
with random weights; an ORT route may run a ``spai export`` folder without it), which route (backend, precision,
device), the encoder's chunk, the input limits and the operating point. It is frozen and picklable: ``spai
predict`` resolves it once on the driver and Ray's actors receive it as it is. :func:`open_scorer` enters its
route and yields a :class:`spai.infer.scorer.Scorer`; ``spai predict``, ``spai test`` / ``spai calibrate``,
``SPAIDetector.score_images``, the Ray actors and the benchmarks open scorers this way.

Resolving a job (:func:`resolve`) turns ``precision`` ``auto`` into the route that passed its parity gate and was
fastest on this device, and holds a GPU's fp16 / bf16 to their gate; it needs the model, and ONNX Runtime routes
are candidates only where ``onnx_dir`` holds their graphs (the command line exports them first: the library does
not import ``export``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from spai.errors import ConfigError
from spai.files import atomic_path, sha256_file
from spai.infer.evidence import RouteEvidence, cache_dir, save_evidence
from spai.infer.prepare import InputLimits
from spai.infer.routes import (
    choose_recorded_route,
    choose_route,
    require_passed,
    resolve_gpu_route,
    resolve_route,
    route_name,
    runners_for,
)
from spai.infer.runners import Route
from spai.infer.scorer import Scorer
from spai.model.calibration import Calibration, calibration_from_export
from spai.model.patching import PatchSpec, patch_spec_from_config
from spai.model.specs import EVIDENCE_FILE

if TYPE_CHECKING:
    from spai.model.nn.spai_model import SPAIModel

log = logging.getLogger(__name__)

DEFAULT_MODEL = "spai-fusion-b16"  # the model we deploy: the named config of a job without a checkpoint


@dataclass(frozen=True)
class ScoringJob:
    """How images are scored (module docstring). ``backend`` None: from the precision (torch for fp32 / bf16 /
    fp16, ort for int8); ``precision`` ``auto``: resolved by evidence (:func:`resolve`)."""

    model: str = DEFAULT_MODEL
    checkpoint: str | None = None
    onnx_dir: str | None = None
    backend: str | None = None
    precision: str = "fp32"
    device: str = "cpu"
    chunk: int | None = None
    limits: InputLimits = field(default_factory=InputLimits)
    operating_point: str | None = None
    patch_spec: PatchSpec | None = None  # the model's patch grid where the job runs graphs only (recorded_job)
    resolved: bool = False  # set by resolve / recorded_job: opening the job never resolves (or gates) it again

    @property
    def by_name(self) -> bool:
        """Whether the route is named without a gate to pass: any CPU route but ``auto``, or fp32 on a GPU (a GPU's
        fp16 / bf16 and ``auto`` are resolved against the model: :func:`resolve`)."""
        return self.precision != "auto" and (self.device == "cpu" or self.precision == "fp32")

    @property
    def route(self) -> str:
        """The route's name (``torch-fp32``, ``ort-int8``, ...); ``auto`` before :func:`resolve`."""
        if self.precision == "auto":
            return "auto"
        return route_name(*self.backend_and_precision())

    def backend_and_precision(self) -> tuple[str, str]:
        """(backend, precision) of a job asked for by name (:class:`ConfigError` for one that does not exist)."""
        if self.device != "cpu":
            return resolve_gpu_route(self.backend, self.precision)
        return resolve_route(self.backend, self.precision)

    def needs_model(self) -> bool:
        """Whether opening this job loads the torch model: torch routes, ``auto``, a GPU, an ORT route with no
        export folder yet, or a checkpoint whose patch grid is not known otherwise (its config is in the file). An
        ORT route over ``onnx_dir`` without a checkpoint, or with the grid recorded (:func:`recorded_job`), runs
        the graphs only."""
        if self.precision == "auto" or self.device != "cpu" or not self.onnx_dir:
            return True
        if self.checkpoint and self.patch_spec is None:
            return True
        return self.backend_and_precision()[0] == "torch"


def load_model(job: ScoringJob) -> SPAIModel:
    """The job's model on its device: the checkpoint's (any format ``spai.create_model`` reads), else the named
    config's with random weights."""
    from spai.model.factory import create_model  # torch is imported only when a job loads its model

    return create_model(None if job.checkpoint else job.model, checkpoint=job.checkpoint, device=job.device)


def resolve(job: ScoringJob, model: SPAIModel | None) -> ScoringJob:
    """The job with a concrete route: a name as asked (a GPU's fp16 / bf16 only where they passed their parity gate
    for ``model`` on that GPU); ``auto`` the fastest route that passed on this device
    (:func:`spai.infer.routes.choose_route`; ONNX Runtime routes where ``onnx_dir`` has their graphs), logged with
    why."""
    if job.resolved:
        return job
    if job.by_name:
        backend, precision = job.backend_and_precision()
        return dataclasses.replace(job, backend=backend, precision=precision, resolved=True)
    if model is None:
        raise ConfigError(f"--precision {job.precision} gates the routes against the model itself: pass "
                          "--checkpoint (or --model), or pick a CPU route by name (--backend ort --precision int8).")
    if job.precision == "auto":
        choice = choose_route(model, onnx_dir=job.onnx_dir, backend=job.backend)
    else:
        choice = require_passed(model, resolve_gpu_route(job.backend, job.precision)[1])
    log.info("%s", choice.reason)
    return dataclasses.replace(job, backend=choice.backend, precision=choice.precision, resolved=True)


def open_route(job: ScoringJob, model: SPAIModel | None) -> Route:
    """The (not yet entered) :class:`Route` of a resolved job: torch runners over ``model``, or ONNX Runtime
    runners over ``job.onnx_dir``."""
    backend, precision = job.backend_and_precision()
    return runners_for(backend, precision, model=model if backend == "torch" else None, onnx_dir=job.onnx_dir,
                       chunk=job.chunk)


def spec_and_calibration(job: ScoringJob, model: SPAIModel | None) -> tuple[PatchSpec, Calibration]:
    """How images are cut and probabilities calibrated: the model's, or (graphs only) the export folder's
    calibration and the named config's patch grid."""
    if model is not None:
        return model.patch_spec, model.calibration
    if not job.onnx_dir:
        raise ConfigError("a job without a model needs an export folder (--onnx DIR).")
    from spai.model.config import get_config  # yaml: only where a job runs graphs without its model

    spec = job.patch_spec or patch_spec_from_config(get_config(job.model))
    return spec, calibration_from_export(job.onnx_dir)


# --- auto without the model: what a checkpoint's earlier run recorded ------------------------------------------------

@functools.lru_cache(maxsize=8)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(Path(path))


def checkpoint_sha256(path: str) -> str:
    """The SHA-256 of a checkpoint file, hashed once per file version in a process (an auto run looks its evidence
    up by it, then records it: one read of a large file, not two)."""
    stat = Path(path).stat()
    return _file_sha256(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


def _index(checkpoint_sha256: str) -> Path:
    """The cache's note of a checkpoint file's export (by the file's SHA-256)."""
    return cache_dir() / "exports" / "by-checkpoint" / f"{checkpoint_sha256[:24]}.json"


def record_export(job: ScoringJob, model: SPAIModel) -> None:
    """Note, for a resolved ``auto`` job over ``job.onnx_dir``, which checkpoint file its graphs and route evidence
    are (the evidence's ``checkpoint_sha256``) and the model's patch grid, so that the next ``auto`` run of the same
    file can pick its route from the evidence alone (:func:`recorded_job`) and, for an ORT route, never load the
    torch model."""
    if not (job.checkpoint and job.onnx_dir):
        return
    sha = checkpoint_sha256(job.checkpoint)
    evidence = RouteEvidence.load(Path(job.onnx_dir) / EVIDENCE_FILE, None)
    if evidence.fingerprint and evidence.checkpoint_sha256 != sha:
        evidence.checkpoint_sha256 = sha
        save_evidence(evidence)
    with atomic_path(_index(sha)) as tmp:
        tmp.write_text(json.dumps({"onnx_dir": str(Path(job.onnx_dir).resolve()),
                                   "patch_spec": dataclasses.asdict(model.patch_spec)}))


def recorded_job(job: ScoringJob) -> ScoringJob | None:
    """``auto`` on this CPU resolved without the model, where an earlier run of this checkpoint file recorded every
    verdict and speed (:func:`spai.infer.routes.choose_recorded_route`) and the choice is an ONNX Runtime route:
    the job over its graphs, carrying the model's patch grid; None otherwise (resolve with the model)."""
    if job.precision != "auto" or job.device != "cpu" or not job.checkpoint or not Path(job.checkpoint).is_file():
        return None
    sha = checkpoint_sha256(job.checkpoint)
    try:
        note = json.loads(_index(sha).read_text())
        folder, spec = note["onnx_dir"], PatchSpec(**note["patch_spec"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if job.onnx_dir and Path(job.onnx_dir).resolve() != Path(folder):
        return None
    choice = choose_recorded_route(folder, sha, backend=job.backend)
    if choice is None or choice.backend != "ort":
        return None
    log.info("%s\n  (from the evidence recorded for this checkpoint file: the model is not loaded)", choice.reason)
    return dataclasses.replace(job, backend=choice.backend, precision=choice.precision, onnx_dir=folder,
                               patch_spec=spec, resolved=True)


@contextlib.contextmanager
def open_scorer(job: ScoringJob, model: SPAIModel | None = None) -> Iterator[Scorer]:
    """The entered :class:`Scorer` of ``job`` (resolved first where it is not: :func:`resolve`). ``model``: the
    job's model where the caller has it (else loaded when the route needs it); an ONNX Runtime route keeps only
    the graphs, so the caller may drop its reference once this yields. The operating point is checked before
    any image is scored."""
    if model is None and job.needs_model():
        model = load_model(job)
    job = resolve(job, model)
    spec, calibration = spec_and_calibration(job, model)
    calibration.operating_point(job.operating_point)  # an unknown operating point fails before any work
    route = open_route(job, model)
    if job.backend_and_precision()[0] != "torch":
        model = None  # the graphs hold what the route runs
    with route:
        yield Scorer.for_route(route, limits=job.limits, spec=spec, calibration=calibration)
