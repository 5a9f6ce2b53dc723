"""Route evidence: each route's parity verdict and measured speed, per model (its weights' fingerprint) and per
device, kept as JSON beside an export (``route_evidence.json``) or in the cache (``$SPAI_CACHE_DIR``, default
``~/.cache/spai``); the one-time gate and speed probe that fill it."""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from spai.errors import ConfigError
from spai.files import atomic_path, sha256_file
from spai.infer.runners import Route
from spai.model.specs import AGGREGATOR_FILE, ENCODER_FILES, EVIDENCE_FILE, PATCHES, PATCHES_INPUT

if TYPE_CHECKING:
    from spai.model.nn.spai_model import SPAIModel

# The graph files each ONNX Runtime route runs: its verdicts hold while these files are the ones it was gated on.
ROUTE_GRAPHS = {f"ort-{p}": (ENCODER_FILES[p], AGGREGATOR_FILE) for p in ("fp32", "int8")}


CACHE_VARIABLE = "SPAI_CACHE_DIR"


EVIDENCE_FORMAT = 1


GATE_PATCHES = 64  # random patches of a route's one-time gate (64 make 15 pseudo-images of 1..8 patches)


GATE_MAX_PIXELS = 1_000_000  # the project's generated images up to this size join the gate


PROBE_PATCHES = 4  # patches a speed probe encodes after one warm-up call


log = logging.getLogger(__name__)


def model_fingerprint(model: SPAIModel) -> str:
    """SHA-256 of the model's weights (names, shapes, dtypes, bytes) and calibration: what route evidence belongs
    to, whichever file (or none) the weights came from."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        array = tensor.detach().cpu().contiguous().numpy()
        digest.update(f"{name}:{array.dtype}:{array.shape};".encode())
        digest.update(memoryview(array).cast("B"))
    digest.update(json.dumps(model.calibration.to_entry(), sort_keys=True).encode())
    return digest.hexdigest()


def cache_dir() -> Path:
    """Where evidence and auto's exports are kept: ``$SPAI_CACHE_DIR``, else ``$XDG_CACHE_HOME/spai``."""
    if os.environ.get(CACHE_VARIABLE):
        return Path(os.environ[CACHE_VARIABLE])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "spai"


@dataclass
class RouteEvidence:
    """Gate verdicts and measured speeds of one model's routes, per CPU (:func:`cpu_identity`), as JSON at
    :attr:`path`. ``checkpoint_sha256``: the checkpoint file's hash where one was exported."""

    path: Path
    fingerprint: str
    checkpoint_sha256: str = ""
    cpus: dict[str, dict[str, Any]] = field(default_factory=dict)
    graphs: dict[str, dict[str, Any]] = field(default_factory=dict)  # ONNX file -> sha256, size, mtime_ns
    bf16_fp32_layers: list[str] | None = None  # what torch-bf16 kept in fp32 when its verdicts were measured

    @classmethod
    def load(cls, path: Path, fingerprint: str | None) -> RouteEvidence:
        """The evidence at ``path`` if it is this model's (another model's or an unreadable file: none yet;
        ``fingerprint`` None: whichever model's it is, for readers that hold only the graphs). ONNX Runtime
        verdicts and speeds of graphs that changed since they were measured are dropped (:func:`changed_graphs`)."""
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return cls(path, fingerprint or "")
        if data.get("format") != EVIDENCE_FORMAT or fingerprint not in (None, data.get("weights_sha256")):
            return cls(path, fingerprint or "")
        evidence = cls(path, str(data.get("weights_sha256", "")), str(data.get("checkpoint_sha256", "")),
                       dict(data.get("cpus") or {}), dict(data.get("graphs") or {}), data.get("bf16_fp32_layers"))
        changed = changed_graphs(path.parent, evidence.graphs) if path.name == EVIDENCE_FILE else set()
        for cpu in evidence.cpus.values():
            for kind in ("verdicts", "speeds"):
                for route in [r for r in cpu.get(kind, {}) if changed & set(ROUTE_GRAPHS.get(r, ()))]:
                    del cpu[kind][route]
        return evidence

    def cpu(self, identity: str) -> dict[str, Any]:
        return self.cpus.setdefault(identity, {"verdicts": {}, "speeds": {}})

    def verdict(self, identity: str, route: str) -> dict[str, Any] | None:
        return self.cpus.get(identity, {}).get("verdicts", {}).get(route)

    def passed(self, identity: str, route: str) -> bool:
        """True where ``route`` has a verdict on this CPU and it passed."""
        verdict = self.verdict(identity, route)
        return bool(verdict and verdict["passed"])

    def speed(self, identity: str, route: str) -> float | None:
        entry = self.cpus.get(identity, {}).get("speeds", {}).get(route)
        return None if entry is None else float(entry["patches_per_s"])

    def save(self) -> Path:
        data = {"format": EVIDENCE_FORMAT, "weights_sha256": self.fingerprint,
                "checkpoint_sha256": self.checkpoint_sha256, "graphs": self.graphs,
                "bf16_fp32_layers": self.bf16_fp32_layers, "cpus": self.cpus}
        with atomic_path(self.path) as tmp:
            tmp.write_text(json.dumps(data, indent=2) + "\n")
        return self.path


def graph_records(folder: Path, known: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """SHA-256, size and mtime of each ONNX graph in ``folder``, so that a verdict is known to be about these
    files (re-hashed only where size or mtime differ from ``known``)."""
    records: dict[str, dict[str, Any]] = {}
    for name in sorted({f for files in ROUTE_GRAPHS.values() for f in files}):
        path = folder / name
        if not path.is_file():
            continue
        stat = path.stat()
        old = (known or {}).get(name)
        if old and (old.get("size"), old.get("mtime_ns")) == (stat.st_size, stat.st_mtime_ns):
            records[name] = old
        else:
            records[name] = {"sha256": sha256_file(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    return records


def changed_graphs(folder: Path, recorded: dict[str, dict[str, Any]]) -> set[str]:
    """The graph files whose ONNX Runtime verdicts no longer hold: changed or gone since ``recorded``, or present
    and never recorded (evidence written without the graphs' hashes)."""
    now = graph_records(folder, recorded)
    return {name for name in {*now, *recorded}
            if now.get(name, {}).get("sha256") != recorded.get(name, {}).get("sha256")}


def evidence_for(model: SPAIModel, onnx_dir: str | os.PathLike | None = None) -> RouteEvidence:
    """The route evidence of ``model``: the export folder's where given (``spai export`` writes it), else the
    cache's."""
    fingerprint = model_fingerprint(model)
    path = Path(onnx_dir) / EVIDENCE_FILE if onnx_dir else cache_dir() / "routes" / f"{fingerprint[:24]}.json"
    evidence = RouteEvidence.load(path, fingerprint)
    _hold_bf16_rule(evidence, model)
    return evidence


def _hold_bf16_rule(evidence: RouteEvidence, model: SPAIModel) -> None:
    """torch-bf16's verdicts and speeds hold while the route keeps the same layers in fp32 as when they were
    measured (:func:`spai.model.nn.precision.bf16_fp32_layers`); measured with others, they are dropped (gated
    again)."""
    torch = sys.modules.get("torch")  # a torch model means torch is imported; an ORT-only install has none
    if torch is None or not isinstance(model, torch.nn.Module):
        return
    from spai.model.nn.precision import bf16_fp32_layers

    try:
        rule = sorted(bf16_fp32_layers(model))
    except ConfigError:  # no SPAI backbone: no bf16 route to hold verdicts for
        return
    if evidence.bf16_fp32_layers != rule:
        for cpu in evidence.cpus.values():
            for kind in ("verdicts", "speeds"):
                cpu.get(kind, {}).pop("torch-bf16", None)
        evidence.bf16_fp32_layers = rule


def record_verdicts(evidence: RouteEvidence, report: Any, identity: str) -> None:
    """Keep each route's verdict of a :class:`spai.infer.parity.ParityReport` (max |dp|, flips, AUC delta per set)."""
    verdicts = evidence.cpu(identity)["verdicts"]
    if evidence.path.name == EVIDENCE_FILE:  # beside the graphs the ONNX Runtime verdicts were measured on
        evidence.graphs = graph_records(evidence.path.parent, evidence.graphs)
    for name, entry in report.backends.items():
        failures = [f for f in report.failures if f.startswith(f"{name}/")]
        sets = {k: {s: entry[k].get(s) for s in ("n", "max_abs_dprob", "decision_flips", "auc_delta")}
                for k in ("random_patches", "images") if k in entry}
        verdicts[name] = {"passed": not failures, "failures": failures, **sets,
                          "date": datetime.date.today().isoformat()}


def gate_routes(model: SPAIModel, routes: Sequence[Route]) -> Any:
    """Gate entered ``routes`` against torch fp32 as ``spai export --precision`` does, smaller: random patches and
    the project's generated images up to :data:`GATE_MAX_PIXELS` (a route's gate runs once per model and device)."""
    from spai.data.samples import write_sample_images
    from spai.infer.images import decode_image
    from spai.infer.parity import compare_routes

    with tempfile.TemporaryDirectory() as folder:
        images = [p for p in write_sample_images(Path(folder))
                  if np.prod(decode_image(p).shape[:2]) <= GATE_MAX_PIXELS]
        log.info("gating %s for this model on this device (%d random patches, %d images; once, then kept) ...",
                 ", ".join(r.name for r in routes), GATE_PATCHES, len(images))
        return compare_routes(model, routes, image_paths=images, n_random=GATE_PATCHES)


def probe_speed(route: Route) -> float:
    """Patches/s of an entered route's encoder on this machine: one warm-up call, then :data:`PROBE_PATCHES`."""
    encoder = route.encoder
    step = encoder.max_dim(PATCHES) or PROBE_PATCHES
    rng = np.random.default_rng(0)
    feed = {PATCHES: rng.integers(0, 256, (min(step, PROBE_PATCHES), *PATCHES_INPUT.shape), dtype=np.uint8)}
    if encoder.input_dtype(PATCHES) != np.uint8:
        feed = {PATCHES: (feed[PATCHES] / 255).astype(encoder.input_dtype(PATCHES))}
    encoder.infer(feed)
    start, done = time.perf_counter(), 0
    while done < PROBE_PATCHES:
        encoder.infer(feed)
        done += len(feed[PATCHES])
    return done / (time.perf_counter() - start)


def save_evidence(evidence: RouteEvidence) -> None:
    """Keep the evidence; an export folder that cannot be written keeps it in the cache instead."""
    try:
        evidence.save()
    except OSError as e:
        evidence.path = cache_dir() / "routes" / f"{evidence.fingerprint[:24]}.json"
        log.warning("cannot write route evidence beside the export (%s); keeping it in %s", e.strerror, evidence.path)
        evidence.save()
