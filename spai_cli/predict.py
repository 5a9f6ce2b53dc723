"""``spai predict``: score images in-process (no server), print a table, optionally write the scores file.

A corpus streams (:mod:`spai_cli.streaming`): inputs listed lazily, read and decoded ahead on worker threads at
most ``--window`` at a time, scored one by one, each row written as it finishes (CSV or Parquet, ``--resume``);
``--engine ray`` scores the same way on a Ray Data pipeline (:mod:`spai.corpus.ray_scoring`, the ``ray`` extra).

The arguments make one :class:`spai.infer.job.ScoringJob` (``--backend torch|ort``, ``--precision
fp32|bf16|fp16|int8|auto``, ``--device``; ``auto``: the fastest route that passed its parity gate for this checkpoint
on this device), resolved once (:func:`spai_cli.routes.resolved_job`) and opened by
:func:`spai.infer.job.open_scorer`, on this machine or in every Ray actor; ``latency_ms`` in the CSV is each image's
scoring time."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from spai.corpus.inputs import InputRef, score_inputs
from spai.corpus.writers import ScoreWriter
from spai.errors import SPAIError
from spai.infer.images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS
from spai.infer.job import ScoringJob, open_scorer
from spai.infer.scorer import Scorer
from spai.infer.scores import ImageScore
from spai.model.calibration import Calibration
from spai_cli.routes import add_route_arguments, check_gpu_job, job_from_args, resolved_job, torch_device
from spai_cli.streaming import (
    TABLE_ROWS,
    RunTally,
    add_corpus_arguments,
    check_sources,
    pending_inputs,
    scores_output,
    write_all,
)

if TYPE_CHECKING:
    from spai.corpus.ray_scoring import ActorPlan

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="score images in-process (PyTorch or ONNX Runtime, fp32/bf16/int8)")
    add_corpus_arguments(p)
    p.add_argument("--model", default="spai-fusion-b16", help="named config (random weights) ...")
    p.add_argument("--checkpoint", help="checkpoint file (ours, upstream spai.pth, fork ckpt_epoch_N.pth)")
    p.add_argument("--operating-point", metavar="NAME",
                   help="decide at this operating point of a calibrated checkpoint (default: its default, e.g. "
                        "fpr0.01; an uncalibrated model decides at p0.5)")
    add_route_arguments(p)
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help=f"refuse larger images (decompression-bomb guard; default {DEFAULT_MAX_PIXELS})")
    p.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_BYTES,
                   help=f"refuse larger files (default {DEFAULT_MAX_BYTES})")
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                   help="threads reading and decoding images ahead of the scorer")
    p.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="local: this process; ray: a Ray Data pipeline of scorer actors (the `ray` extra)")
    p.add_argument("--address", help="--engine ray: the Ray cluster to join (default: start one on this machine)")
    p.add_argument("--actors", type=int, help="--engine ray: scorer actors (default: one per GPU, else one per node)")
    p.add_argument("--device", choices=("cpu", "cuda"),
                   help="cpu (default), or cuda: the torch routes on this machine's GPU (fp32; fp16 / bf16 under "
                        "autocast where they pass their parity gate); --engine ray: actors take a GPU each where "
                        "the cluster has GPUs unless --device cpu")
    p.set_defaults(func=run)


@contextlib.contextmanager
def predict_scorer(args: argparse.Namespace) -> Iterator[Scorer]:
    """The entered :class:`spai.infer.scorer.Scorer` of the job ``--checkpoint`` / ``--model`` / ``--backend`` /
    ``--precision`` / ``--onnx`` / ``--device`` ask for (:func:`spai_cli.routes.resolved_job`, resolved once),
    with the ``--max-pixels`` / ``--max-bytes`` limits."""
    job, model = resolved_job(job_from_args(args, torch_device(args)))
    with open_scorer(job, model) as scorer:
        del model  # an ORT route holds the graphs only: the torch weights can go
        yield scorer


def ray_job(args: argparse.Namespace, plan: ActorPlan) -> ScoringJob:
    """The job every Ray actor opens, checked and resolved once on the driver: a bad checkpoint or operating point
    fails here, before any actor starts; a CPU route is chosen once (``auto``: by this machine's evidence), an
    ORT route's graphs exported once into the cache (cluster workers must see that path, as they must see the
    checkpoint's). Actors with a GPU run the torch route asked for on it, resolving fp16 / bf16 / auto against
    their GPU's own evidence."""
    job = job_from_args(args, "cuda" if plan.num_gpus else "cpu")
    if plan.num_gpus:
        check_gpu_job(job)
        checked = dataclasses.replace(job, backend="torch", precision="fp32", device="cpu")
        resolved_job(checked)  # the checkpoint and the operating point, checked on the driver's CPU
        return dataclasses.replace(job, backend="torch")
    return resolved_job(job)[0]


def print_table(rows: Sequence[ImageScore]) -> None:
    """Image, patches, probability, decision, milliseconds: one line per image."""
    print(f"{'image':<44} {'patches':>7} {'prob':>7} {'decision':>9} {'ms':>9}")
    for r in rows:
        prob = "error" if r.error else f"{r.probability:.4f}"
        decision = "" if r.decision is None else ("AI-gen" if r.decision else "real")
        print(f"{printable(Path(r.image).name)[:44]:<44} {r.num_patches:>7} {prob:>7} {decision:>9} "
              f"{r.latency_ms:>9.1f}" + (f"  {printable(r.error)}" if r.error else ""))


def describe_point(calibration: Calibration, name: str | None = None) -> str:
    """What a decision at operating point ``name`` means, in one line."""
    point = calibration.operating_point(name)
    if not calibration.calibrated:
        return (f"operating point {point.name}: uncalibrated, probability = sigmoid(logit) >= {point.threshold}; "
                "`spai calibrate` sets thresholds at a chosen false-positive rate")
    return (f"operating point {point.name}: calibrated probability ({calibration.method}) >= {point.threshold:.6g}"
            f"; others: {', '.join(p.name for p in calibration.operating_points if p.name != point.name) or 'none'}")


def printable(text: str) -> str:
    """A non-UTF-8 file name (surrogate-escaped by the OS layer) shown with replacement characters."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def run(args: argparse.Namespace) -> int:
    check_sources(args.inputs)
    with scores_output(args) as writer:
        refs, done = pending_inputs(args)
        if args.engine == "ray":
            return run_ray(args, refs, writer)
        with predict_scorer(args) as scorer:
            tally = write_all(score_inputs(scorer, refs, args.operating_point, args.window, args.workers), writer,
                              args, done)
    print_summary(tally, scorer.calibration, args, len(done))
    return 0


def run_ray(args: argparse.Namespace, refs: Iterator[InputRef], writer: ScoreWriter | None) -> int:
    """``--engine ray``: the same scoring on a Ray Data pipeline; its rows go to ``-o`` (required)."""
    if writer is None:
        raise SPAIError("--engine ray writes its scores to a file: pass -o scores.parquet (or .csv).")
    try:  # the one in-function import: Ray is an optional extra
        from spai.corpus.ray_scoring import live_nodes, plan_from_nodes, ray_started, score_with_ray
    except ImportError as e:
        raise SPAIError(f"--engine ray needs Ray ({e}); install the `ray` extra: pip install "
                        "'spai-deploy[ray]'.") from e
    with ray_started(args.address):
        plan = plan_from_nodes(live_nodes(), args.actors, args.device != "cpu")
        job = ray_job(args, plan)
        log.info("ray: %d scorer actor(s), %s %s each", plan.actors, plan.num_gpus or plan.threads,
                 "GPU" if plan.num_gpus else "CPU thread(s)")
        written = score_with_ray(job, plan, refs, writer, progress=not args.no_progress)
    print(f"scored {written} images with Ray -> {args.output}")
    return 0


def print_summary(tally: RunTally, calibration: Calibration, args: argparse.Namespace, already: int) -> None:
    """The table (first rows only), where the scores went, the flagged count; an error when nothing scored."""
    print_table(tally.first)
    if tally.scored > len(tally.first):
        print(f"... and {tally.scored - len(tally.first)} more (the first {TABLE_ROWS} shown)")
    if args.output:
        print(f"wrote {tally.scored} rows to {args.output}" + (f" ({already} already there)" if already else ""))
    print(f"{tally.flagged.summary()}\n{describe_point(calibration, args.operating_point)}")
    if tally.scored and tally.failed == tally.scored:
        raise SPAIError("no image could be scored (see the errors above).")
