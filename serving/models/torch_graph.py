"""How a python-torch graph model runs (testable without pb_utils): its settings from config parameters, the device
of its Triton instance, the checkpoint's model behind a :class:`spai.infer.runners.TorchRunner` (under
``torch.autocast`` for fp16 / bf16, also what benchmarks/gpu_check.py times), and dynamic
batches run in calls of at most ``max_torch_batch`` rows (:mod:`serving.models.batching`).

The model file is ``serving/models/torch_model.py``; the repository is written by
:func:`serving.repository.build_torch_repository`. Imports torch only when a model is built or run.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from serving.instance import instance_threads, limit_threads
from serving.models.batching import infer_in_slices
from spai.errors import ServingError
from spai.infer.routes import require_passed
from spai.infer.runners import GRAPHS, Feed, TorchRunner
from spai.lazy import lazy_import
from spai.model.specs import PATCH_FEATURES, PATCHES

torch = lazy_import("torch")
log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "bf16")


def torch_runner(model: Any, graph: str, precision: str = "fp32", max_batch: int | None = None
                 ) -> TorchRunner:
    """The runner of ``graph`` in ``precision``: fp32 is the reference, fp16 / bf16 the encoder under
    ``torch.autocast`` on the model's device (the aggregator stays fp32, as in every exported route)."""
    if precision not in PRECISIONS:
        raise ServingError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}.")
    return TorchRunner(model, graph, max_batch, precision, autocast=precision != "fp32")


@dataclass(frozen=True)
class GraphSettings:
    """What a python-torch graph model's config.pbtxt ``parameters`` say (written by serving.repository)."""

    graph: str  # patch_encoder | aggregator
    checkpoint: str  # absolute path of the checkpoint both graph models read
    precision: str = "fp32"
    threads: int = 0  # torch / OpenMP threads of a CPU instance (0: the cores shared among the instances)
    max_rows: int | None = None  # rows per torch call (None: what Triton's max_batch_size lets through)

    @classmethod
    def from_parameters(cls, params: Mapping[str, str], model_dir: str, max_batch_size: int = 0) -> GraphSettings:
        """From Triton string parameters; ``checkpoint`` is relative to the model's folder (``model_dir``).
        :class:`ServingError` naming the parameter when one is missing or malformed."""
        graph, precision = params.get("graph", ""), params.get("precision", "fp32")
        if graph not in GRAPHS:
            raise ServingError(f"config.pbtxt parameter graph={graph!r} must be one of {', '.join(GRAPHS)}; "
                               "rebuild the repository with `spai repository --variant python-torch`.")
        if precision not in PRECISIONS:
            raise ServingError(f"config.pbtxt parameter precision={precision!r} must be one of "
                               f"{', '.join(PRECISIONS)}.")
        checkpoint = os.path.normpath(os.path.join(model_dir, params.get("checkpoint", "")))
        if not params.get("checkpoint") or not os.path.isfile(checkpoint):
            raise ServingError(f"{model_dir}: checkpoint {checkpoint} (config.pbtxt parameter checkpoint) not "
                               "found; rebuild the repository with `spai repository --variant python-torch "
                               "--checkpoint CKPT -o REPO`.")
        ints = {}
        for key in ("threads", "max_torch_batch"):
            try:
                ints[key] = int(params.get(key, "0"))
            except ValueError as e:
                raise ServingError(f"config.pbtxt parameter {key}={params[key]!r} is not an integer.") from e
        return cls(graph, checkpoint, precision, ints["threads"], ints["max_torch_batch"] or max_batch_size or None)


def device_from_instance(kind: str, device_id: int | str = 0) -> str:
    """The torch device of a Triton instance: ``cuda:<id>`` for KIND_GPU (``args["model_instance_kind"]`` is
    "GPU"), else the CPU; :class:`ServingError` for a GPU instance where torch sees no CUDA device."""
    if kind.upper() != "GPU":
        return "cpu"

    if not torch.cuda.is_available():
        raise ServingError("a KIND_GPU instance, but torch.cuda.is_available() is False here (no CUDA device, or a "
                           "CPU-only torch); rebuild the repository with --device cpu.")
    return f"cuda:{int(device_id)}"


def check_precision(precision: str, device: str) -> None:
    """fp16 / bf16 autocast is for GPU instances: on a CPU it is refused (fp32 there)."""
    if precision != "fp32" and not device.startswith("cuda"):
        raise ServingError(f"precision {precision} runs on GPU instances only (KIND_GPU); a CPU instance runs "
                           "fp32: rebuild the repository with --device gpu, or with --precision fp32.")


class TorchGraph:
    """One graph of the checkpoint's model on one instance's device, running a dynamic batch's feeds."""

    def __init__(self, settings: GraphSettings, device: str, instances: int = 1) -> None:

        import spai

        check_precision(settings.precision, device)
        if device == "cpu":
            torch.set_num_threads(limit_threads(instance_threads(settings.threads, instances)))
        model = spai.create_model(checkpoint=settings.checkpoint, device=device)
        if settings.graph == "patch_encoder" and settings.precision != "fp32":
            # served only where it passed its parity gate for this checkpoint on this GPU (gated once, then kept)
            log.info(require_passed(model, settings.precision).reason)
        self.settings, self.device = settings, device
        self.runner = torch_runner(model, settings.graph, settings.precision, settings.max_rows)
        if settings.graph == "aggregator" and settings.max_rows:  # the encoder's limit is its max_batch
            self.runner.limits = {PATCH_FEATURES: (settings.max_rows,)}
        # without a bound the encoder keeps the model's chunk size; the aggregator is then unlimited
        self.max_rows = settings.max_rows or self.runner.max_dim(PATCHES)

    def infer(self, feeds: Sequence[Feed]) -> list[Feed]:
        """The outputs of every feed (batch-first arrays by input name), in calls of at most ``max_rows`` rows."""
        return infer_in_slices(self.runner, feeds, self.max_rows)
