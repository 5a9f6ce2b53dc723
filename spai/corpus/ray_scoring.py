"""``spai predict --engine ray``: the same scoring as ``spai predict``, as a Ray Data pipeline.

listing (an iterator of :class:`spai.corpus.inputs.InputRef`, already filtered by ``--resume``) -> windows of
:data:`WINDOW` refs -> ``ray.data.from_items`` -> read bytes (``map_batches`` with :func:`spai.corpus.inputs.read_input`)
-> ``map_batches`` over a pool of :class:`ScoringActor` (each opens the job's scorer once,
:func:`spai.infer.job.open_scorer`, as ``spai predict`` does) -> rows back on the driver (``iter_batches``), written by the
:class:`spai.corpus.writers.ScoreWriter` as blocks arrive, so a killed run resumes like ``spai predict``.

Why windows: Ray Data plans a dataset from a list held by the driver; a window bounds that list, so a corpus of
millions of refs never sits in driver memory at once. Each window is one dataset execution, so the actor pool
(and its model) is built once per window: windows are large enough that this start is small beside the scoring.

Without ``--address`` Ray runs embedded on this machine (no dashboard, quiet logs); with one it joins a cluster,
whose workers need this package and the same checkpoint path (or ``--onnx`` folder) as the driver.
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import logging
import math
import os
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from spai.corpus.inputs import InputRef, read_input, score_inputs
from spai.errors import ConfigError, ImageError, SPAIError, error_chain
from spai.infer.job import ScoringJob, open_scorer
from spai.infer.prepare import InputLimits
from spai.infer.scorer import Scorer
from spai.infer.scores import COLUMNS, KEY_FIELDS, Column, ImageScore
from spai.lazy import lazy_import

if TYPE_CHECKING:
    from spai.corpus.writers import ScoreWriter

ray = lazy_import("ray")
tqdm = lazy_import("tqdm")

WINDOW = 20_000  # refs per dataset execution: bounds driver memory; one actor-pool start per window
BATCH = 8  # images per actor call: small, so rows reach the writer (and resume) soon after they are scored
DECODE_THREADS = 2  # threads of an actor decoding a block's images ahead of its scorer (as spai predict's --workers)
READ_CPUS = 0.25  # logical CPUs of one read task: reading is I/O; the cores are left to the scorers

@dataclass(frozen=True)
class ActorPlan:
    """How many scorer actors, and what each reserves: one GPU each where the cluster has GPUs, else a share of
    a node's CPUs (``threads``: the intra-op threads that share stands for)."""

    actors: int
    num_cpus: float
    num_gpus: int
    threads: int


def plan_from_nodes(nodes: Sequence[Mapping[str, float]], actors: int | None, gpus: bool = True) -> ActorPlan:
    """The actor plan for the live nodes' resources (``ray.nodes()``'s ``Resources``). With GPUs (unless
    ``gpus`` is False): one actor per GPU by default, each on one GPU. On CPUs: one actor per node by default,
    using every core of it through its runner's threads; ``actors`` spreads ceil(actors / nodes) over each node.
    An actor's reservation fits the smallest node, the read tasks' share kept free: Ray places an actor on one
    node, so a plan sized by the cluster's total could never be placed."""
    if actors is not None and actors < 1:
        raise ConfigError(f"--actors must be at least 1 (got {actors}).")
    gpu_nodes = [n for n in nodes if n.get("GPU", 0) >= 1] if gpus else []
    if gpu_nodes:
        per_gpu = min(float(n.get("CPU", 0)) / int(n["GPU"]) for n in gpu_nodes)
        total = sum(int(n["GPU"]) for n in gpu_nodes)
        return ActorPlan(actors or total, min(1.0, max(per_gpu - READ_CPUS, 0.0)), 1, max(1, int(per_gpu)))
    cpu_nodes = [float(n.get("CPU", 0)) for n in nodes if n.get("CPU", 0) >= 1]  # a head with num_cpus=0 scores nothing
    if not cpu_nodes:
        raise ConfigError("the Ray cluster has no live node with a CPU to run scorer actors on; check `ray status`.")
    n = actors or len(cpu_nodes)
    per_node, smallest = math.ceil(n / len(cpu_nodes)), min(cpu_nodes)
    share = (smallest - READ_CPUS) / per_node
    if share <= 0:
        raise ConfigError(f"the Ray cluster's nodes have {smallest:g} CPUs, too few for {per_node} scorer actors "
                          "each plus reading; lower --actors.")
    return ActorPlan(n, share, 0, max(1, int(smallest // per_node)))


def live_nodes() -> list[dict[str, float]]:
    """Each live node's resources in the Ray cluster this process joined."""
    return [dict(node["Resources"]) for node in ray.nodes() if node.get("Alive")]


def ray_started(address: str | None) -> contextlib.AbstractContextManager[None]:
    """Ray for this run: joined at ``address``, or embedded on this machine (all its cores, no dashboard, quiet
    logs), shut down at the end unless it was already running in this process."""
    try:
        ray.init  # noqa: B018 - the first use imports Ray: the check that names the extra
    except ImportError as e:
        raise ConfigError("--engine ray needs Ray Data: pip install 'spai-deploy[ray]' (or pip install "
                          "'ray[data]>=2.9').") from e
    return _ray_session(address)


@contextlib.contextmanager
def _ray_session(address: str | None) -> Iterator[None]:
    if ray.is_initialized():
        yield
        return
    quiet = {"logging_level": logging.ERROR, "log_to_driver": False}
    try:
        if address:
            ray.init(address=address, **quiet)
        else:
            ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, **quiet)
    except ConnectionError as e:
        raise ConfigError(f"cannot join the Ray cluster at {address} ({e}); start it with `ray start --head` "
                          "or leave out --address for a local Ray.") from e
    try:
        yield
    finally:
        ray.shutdown()


def read_batch(batch: dict[str, np.ndarray], limits: InputLimits) -> dict[str, np.ndarray]:
    """Read stage: each ref's bytes, or its read error (an unreadable input is a row, not a failed run)."""
    data, errors = [], []
    for ref in refs_from_batch(batch):
        try:
            data.append(read_input(ref, limits))
            errors.append("")
        except ImageError as e:
            data.append(b"")
            errors.append(str(e))
    return {**batch, "data": np.array(data, dtype=object), "read_error": np.array(errors, dtype=object)}


class ScoringActor:
    """One scorer of the pool: the job's scorer (:func:`spai.infer.job.open_scorer`, as ``spai predict`` opens
    it), entered once for the actor's life, scoring a block's images as ``spai predict`` does (so the scores are
    its scores). A GPU job runs on the GPU Ray assigned (CUDA_VISIBLE_DEVICES), resolving fp16 / bf16 / auto
    against that GPU's own evidence."""

    def __init__(self, job: ScoringJob, threads: int) -> None:
        os.environ["OMP_NUM_THREADS"] = str(threads)  # torch reads it at import (Ray sets it to the CPU share)
        self.job = job
        self.stack = contextlib.ExitStack()
        self.scorer: Scorer = self.stack.enter_context(open_scorer(job))
        torch = sys.modules.get("torch")
        if torch is not None:
            torch.set_num_threads(threads)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Score a block's images as ``spai predict`` does (:func:`spai.corpus.inputs.score_inputs`: decode threads
        ahead of the scorer), from the bytes the read stage fetched."""
        fetched = {str(key): (data, str(error))
                   for key, data, error in zip(batch["key"], batch["data"], batch["read_error"], strict=True)}

        def fetch(ref: InputRef) -> bytes:
            data, error = fetched[ref.key]
            if error:
                raise ImageError(error)
            return bytes(data)

        refs = list(refs_from_batch(batch))
        scores = list(score_inputs(self.scorer, refs, self.job.operating_point, len(refs), DECODE_THREADS, fetch))
        for row in scores:
            row.attention = None  # not written: keep it out of the object store
        return {"key": batch["key"], "size": batch["size"], "mtime": batch["mtime"], **columns_from_scores(scores)}


def columns_from_scores(scores: list[ImageScore]) -> dict[str, np.ndarray]:
    """Scores as the columns of a Ray block: the row's columns (:data:`spai.infer.scores.COLUMNS`) less the resume
    key, which the ref's columns carry; a missing value as numpy holds an Arrow null: NaN in a number (or bool)
    column, None in a text one (:meth:`ImageScore.from_record` reads both back as None)."""
    return {c.name: np.array([getattr(s, c.name) for s in scores], dtype=object if c.kind is str else np.float64)
            for c in COLUMNS if c.name not in KEY_FIELDS}


def columns_from_refs(refs: Iterable[InputRef]) -> list[dict[str, Any]]:
    """Refs as the items of a Ray dataset (None where a size / mtime is unknown: Arrow's null)."""
    return [{"key": r.key, "size": r.size, "mtime": r.mtime} for r in refs]


def refs_from_batch(batch: dict[str, np.ndarray]) -> Iterator[InputRef]:
    """The inverse of :func:`columns_from_refs` (null, or NaN, its numpy form, reads back as None)."""
    size, mtime = Column("size", int), Column("mtime", float)
    for key, s, m in zip(batch["key"], batch["size"], batch["mtime"], strict=True):
        yield InputRef(str(key), size.parse(s), mtime.parse(m))


def scores_from_batch(batch: dict[str, np.ndarray]) -> Iterator[tuple[InputRef, ImageScore]]:
    """Each row of a scored block: its input ref and its :class:`ImageScore` (the inverse of
    :func:`columns_from_scores`; the ref's size and mtime are its resume key)."""
    names = [c.name for c in COLUMNS if c.name not in KEY_FIELDS]
    for i, ref in enumerate(refs_from_batch(batch)):
        row = {name: batch[name][i] for name in names}
        yield ref, ImageScore.from_record({**row, "size_bytes": ref.size, "mtime": ref.mtime})


def scored_window(refs: list[InputRef], plan: ActorPlan, job: ScoringJob) -> Iterator[tuple[InputRef, ImageScore]]:
    """One window through the pipeline; rows as their blocks arrive (in no particular order)."""
    items = columns_from_refs(refs)
    ds = ray.data.from_items(items, override_num_blocks=max(1, math.ceil(len(items) / BATCH)))
    ds = ds.map_batches(read_batch, fn_kwargs={"limits": job.limits}, batch_size=BATCH, num_cpus=READ_CPUS)
    ds = ds.map_batches(ScoringActor, fn_constructor_kwargs={"job": job, "threads": plan.threads},
                        batch_size=BATCH, compute=actor_pool(plan.actors),
                        num_cpus=plan.num_cpus, num_gpus=plan.num_gpus)
    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=0):
            yield from scores_from_batch(batch)
    except ray.exceptions.RayError as e:
        error = user_error(e)
        if error is None:
            raise
        raise error from None


def actor_pool(size: int) -> Any:
    """A fixed pool of ``size`` actors whose UDF runs on the actor's main thread, one call at a time.

    Why the main thread: by default Ray Data runs a class UDF on a helper thread, and torch's OpenMP runtime
    (libgomp) then counts that thread's team beside the main thread; with more OpenMP threads than cores it cuts
    its workers' spin-wait to ~100 spins, so each of the encoder's many short parallel regions pays a sleep and a
    wake-up (the measured cost: docs/scale.md). Ray Data releases without these options keep the helper thread,
    and that slower rate."""
    options = inspect.signature(ray.data.ActorPoolStrategy).parameters
    if not {"enable_true_multi_threading", "max_concurrent_calls_per_actor"} <= options.keys():
        return ray.data.ActorPoolStrategy(size=size)
    return ray.data.ActorPoolStrategy(size=size, enable_true_multi_threading=True, max_concurrent_calls_per_actor=1)


def user_error(error: BaseException) -> SPAIError | None:
    """The :class:`SPAIError` a worker raised (a bad checkpoint, an unknown operating point), out of the Ray
    errors that carry it, so the command prints its message instead of a remote traceback."""
    chain = error_chain(error, ("cause", "__cause__", "__context__"))  # `cause`: what a RayTaskError wraps
    return next((e for e in chain if isinstance(e, SPAIError)), None)


def score_with_ray(job: ScoringJob, plan: ActorPlan, inputs: Iterator[InputRef], writer: ScoreWriter,
                   progress: bool = True) -> int:
    """Score ``inputs`` with ``plan``'s actors on the running Ray (:func:`ray_started`), each opening ``job``'s
    scorer (resolved on the driver: a bad checkpoint or operating point fails there, once), and write each row with
    ``writer`` as it arrives; the number of rows written."""
    _quiet_ray_data()
    written = 0
    with tqdm.tqdm(desc="scoring (ray)", unit="img", file=sys.stderr, disable=None if progress else True,
                   dynamic_ncols=True) as bar:
        for window in windows(inputs, WINDOW):
            for _, score in scored_window(window, plan, job):
                writer.write(score)
                written += 1
                bar.update()
    return written


def windows(inputs: Iterable[InputRef], size: int) -> Iterator[list[InputRef]]:
    """``inputs`` in lists of at most ``size``, read lazily."""
    it = iter(inputs)
    while window := list(itertools.islice(it, size)):
        yield window


def _quiet_ray_data() -> None:
    """No Ray Data progress bars or per-operator logs on the user's terminal (the run has its own bar)."""
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.verbose_stats_logs = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)
