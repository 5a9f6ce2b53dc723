"""``spai predict --engine ray`` (spai.corpus.ray_scoring): the actor plan per node, the block columns, and a real local Ray
(one per module) scoring a corpus with the same probabilities as ``spai predict``, resumable, bad images as rows,
user mistakes as messages; one SIGKILL mid-run and a resume in a subprocess."""

from __future__ import annotations

import argparse
import pickle
import inspect
import random
import threading
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_clean_failure, run_spai_killed_at
from PIL import Image

from spai.corpus.inputs import InputRef
from spai.corpus.writers import read_score_rows
from spai.errors import CheckpointError, ConfigError
from spai.infer.scores import ImageScore

ray = pytest.importorskip("ray", reason="the `ray` extra (pip install 'spai-deploy[ray]') is not installed")

from spai.corpus.ray_scoring import (  # noqa: E402  (after the skip: the module names Ray lazily, the tests use it)
    ActorPlan,
    actor_pool,
    columns_from_refs,
    columns_from_scores,
    plan_from_nodes,
    scores_from_batch,
    user_error,
    windows,
)
from spai_cli import main  # noqa: E402
from spai_cli.predict import ray_job  # noqa: E402

N_IMAGES = 14
GPU_NODE = {"CPU": 16.0, "GPU": 4.0}
CPU_NODE = {"CPU": 16.0}


# --- The plan: what each actor reserves, per node ----------------------------------------------------------------

def test_gpu_clusters_get_one_actor_per_gpu() -> None:
    assert plan_from_nodes([GPU_NODE, GPU_NODE, {"CPU": 8.0}], None) == ActorPlan(8, 1.0, 1, 4)
    assert plan_from_nodes([GPU_NODE], 2) == ActorPlan(2, 1.0, 1, 4)
    assert plan_from_nodes([GPU_NODE], None, gpus=False) == ActorPlan(1, 15.75, 0, 16)  # --device cpu


def test_cpu_actors_fit_one_node_not_the_cluster_total() -> None:
    assert plan_from_nodes([CPU_NODE] * 4, None) == ActorPlan(4, 15.75, 0, 16)  # one per node, placeable
    assert plan_from_nodes([CPU_NODE] * 4, 8) == ActorPlan(8, 7.875, 0, 8)
    assert plan_from_nodes([{"CPU": 0.0}, {"CPU": 2.0}], None) == ActorPlan(1, 1.75, 0, 2)  # head without CPUs
    assert plan_from_nodes([CPU_NODE, {"CPU": 4.0}], None) == ActorPlan(2, 3.75, 0, 4)  # sized by the smallest


def test_plans_that_cannot_run_are_refused() -> None:
    with pytest.raises(ConfigError, match="at least 1"):
        plan_from_nodes([CPU_NODE], 0)
    with pytest.raises(ConfigError, match="no live node with a CPU"):
        plan_from_nodes([{"CPU": 0.0}], None)


def test_gpu_actors_run_the_torch_route_asked_for_and_refuse_a_cpu_route(tiny_model, tmp_path) -> None:
    import spai

    ckpt = spai.save_checkpoint(tiny_model, tmp_path / "tiny.pth")
    args = argparse.Namespace(model="spai-tiny", checkpoint=str(ckpt), backend=None, precision="auto", onnx=None,
                              operating_point=None, chunk_size=None, device=None, max_bytes=None, max_pixels=None)
    job = ray_job(args, ActorPlan(2, 1.0, 1, 4))
    # each GPU actor gates fp16 / bf16 on its own GPU: auto stays auto (the actor picks what passed there)
    assert (job.backend, job.precision, job.device, job.checkpoint) == ("torch", "auto", "cuda", str(ckpt))
    pickle.loads(pickle.dumps(job))  # what each actor receives: a frozen, picklable job, no argparse.Namespace
    fp16 = ray_job(argparse.Namespace(**{**vars(args), "precision": "fp16"}), ActorPlan(2, 1.0, 1, 4))
    assert (fp16.backend, fp16.precision, fp16.device) == ("torch", "fp16", "cuda")
    with pytest.raises(ConfigError, match="CPU route.*--device cpu"):
        ray_job(argparse.Namespace(**{**vars(args), "backend": "ort", "precision": "int8"}), ActorPlan(2, 1.0, 1, 4))
    with pytest.raises(CheckpointError):  # checked once on the driver, before any actor starts
        ray_job(argparse.Namespace(**{**vars(args), "checkpoint": str(tmp_path / "missing.pth")}),
                ActorPlan(1, 1.75, 0, 2))


# --- Blocks: scores and refs through Ray's columns and back ------------------------------------------------------

def test_scores_survive_the_block_columns() -> None:
    refs = [InputRef("a.png", 10, 1.5), InputRef("s3://b/c.jpg", None, None)]
    scores = [ImageScore("a.png", 0.25, -1.0986, 4, 3.5, decision=False, operating_point="p0.5"),
              ImageScore("s3://b/c.jpg", error="s3://b/c.jpg: truncated image")]
    batch = {k: np.array([item[k] for item in columns_from_refs(refs)]) for k in ("key", "size", "mtime")}
    got = list(scores_from_batch({**batch, **columns_from_scores(scores)}))
    assert [ref for ref, _ in got] == refs
    for (ref, score), want in zip(got, scores, strict=True):
        assert (score.image, score.probability, score.logit, score.decision, score.error, score.num_patches) == \
            (want.image, want.probability, want.logit, want.decision, want.error, want.num_patches)
        assert (score.size_bytes, score.mtime) == (ref.size, ref.mtime)


def test_windows_bound_what_the_driver_holds() -> None:
    refs = (InputRef(f"{i}.png") for i in range(7))
    assert [len(w) for w in windows(refs, 3)] == [3, 3, 1]


def test_user_error_finds_the_spai_error_a_worker_raised() -> None:
    cause = ConfigError("unknown operating point 'x'")
    wrapped = RuntimeError("actor died")
    wrapped.cause = cause  # type: ignore[attr-defined]  (Ray's errors carry the worker's exception as .cause)
    outer = ValueError("task failed")
    outer.__cause__ = wrapped
    assert user_error(outer) is cause and user_error(ValueError("other")) is None


# --- A real local Ray ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def local_ray():
    """One embedded Ray for the module (`spai predict --engine ray` reuses a Ray this process started)."""
    import logging

    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def corpus(tiny_model, tmp_path_factory) -> tuple[Path, Path, dict[str, float]]:
    """(image folder with one bad file, checkpoint, image -> probability of an uninterrupted local run)."""
    import spai

    out = tmp_path_factory.mktemp("ray-corpus")
    images = out / "images"
    images.mkdir()
    for i in range(N_IMAGES):
        pixels = np.random.default_rng(i).integers(0, 255, (200 + 9 * i, 240, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / f"img{i:03d}.png")
    (images / "zz-bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    ckpt = spai.save_checkpoint(tiny_model, out / "tiny.pth")
    ref = out / "ref.parquet"
    assert main(["predict", str(images), "--checkpoint", str(ckpt), "-o", str(ref), "--no-progress"]) == 0
    return images, ckpt, {r["image"]: r["probability"] for r in read_score_rows(ref)}


def _ray_predict(images: Path, ckpt: Path, out: Path, *extra: str) -> list[str]:
    return ["predict", str(images), "--checkpoint", str(ckpt), "-o", str(out), "--no-progress", "--engine", "ray",
            *extra]


def _assert_scored_like_local(out: Path, reference: dict[str, float], tolerance: float = 1e-6) -> None:
    rows = read_score_rows(out)
    keys = [r["image"] for r in rows]
    assert sorted(keys) == sorted(reference) and len(keys) == len(set(keys))
    bad = [r for r in rows if r["error"]]
    assert [Path(r["image"]).name for r in bad] == ["zz-bad.png"] and reference[bad[0]["image"]] is None
    good = [r for r in rows if not r["error"]]
    assert max(abs(r["probability"] - reference[r["image"]]) for r in good) <= tolerance


def test_ray_scores_equal_local_predict_and_resume_continues(corpus, local_ray, tmp_path, capsys) -> None:
    images, ckpt, reference = corpus
    out = tmp_path / "ray.parquet"
    assert main(_ray_predict(images, ckpt, out)) == 0
    _assert_scored_like_local(out, reference)
    assert f"scored {N_IMAGES + 1} images with Ray" in capsys.readouterr().out

    partial = tmp_path / "partial.csv"  # an earlier run's first rows, then the rest through Ray
    listing = tmp_path / "first.txt"
    listing.write_text("\n".join(str(p) for p in sorted(images.iterdir())[:5]) + "\n")
    assert main(["predict", str(listing), "--checkpoint", str(ckpt), "-o", str(partial), "--no-progress"]) == 0
    assert main(_ray_predict(images, ckpt, partial, "--resume")) == 0
    assert f"scored {N_IMAGES + 1 - 5} images with Ray" in capsys.readouterr().out
    rows = read_score_rows(partial)
    assert len(rows) == N_IMAGES + 1 and len({r["image"] for r in rows}) == N_IMAGES + 1
    assert max(abs(r["probability"] - reference[r["image"]]) for r in rows if not r["error"]) <= 5e-7 + 1e-6


def test_scorer_actors_run_their_udf_on_the_main_thread(local_ray) -> None:
    """torch's OpenMP workers keep spinning only while its threads do not outnumber the cores, and a UDF on Ray
    Data's helper thread adds a second team (docs/scale.md): the pool must call the scorer on the actor's main
    thread."""
    if "enable_true_multi_threading" not in inspect.signature(ray.data.ActorPoolStrategy).parameters:
        pytest.skip(f"Ray {ray.__version__} has no ActorPoolStrategy(enable_true_multi_threading=...)")

    class _ThreadReport:  # defined here, so that Ray ships it by value (this module does not import in a worker)
        def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            on_main = threading.current_thread() is threading.main_thread()
            return {"on_main": np.full(len(batch["id"]), on_main)}

    ds = ray.data.range(16, override_num_blocks=4).map_batches(_ThreadReport, batch_size=4, compute=actor_pool(1))
    assert all(row["on_main"] for row in ds.take_all())


def test_user_mistakes_fail_once_on_the_driver_with_a_message(corpus, local_ray, tmp_path, spai_cli) -> None:
    images, ckpt, _ = corpus
    point = spai_cli(*_ray_predict(images, ckpt, tmp_path / "a.parquet", "--operating-point", "fpr0.5"))
    assert_clean_failure(point, 1, "operating point")
    assert not (tmp_path / "a.parquet").exists() or not read_score_rows(tmp_path / "a.parquet")
    missing = spai_cli(*_ray_predict(images, tmp_path / "missing.pth", tmp_path / "b.parquet"))
    assert_clean_failure(missing, 1, "missing.pth")
    no_output = spai_cli("predict", str(images), "--checkpoint", str(ckpt), "--engine", "ray")
    assert_clean_failure(no_output, 1, "-o scores.parquet")


def test_remote_outputs_and_cuda_without_a_gpu_are_refused(corpus, tmp_path, spai_cli) -> None:
    images, ckpt, _ = corpus
    remote = spai_cli("predict", str(images), "--checkpoint", str(ckpt), "-o", "s3://bucket/scores.parquet")
    assert_clean_failure(remote, 1, "local file")
    assert not Path("s3:").exists()
    import torch

    if not torch.cuda.is_available():
        cuda = spai_cli("predict", str(images), "--checkpoint", str(ckpt), "--device", "cuda")
        assert_clean_failure(cuda, 1, "no CUDA GPU")
    int8 = spai_cli("predict", str(images), "--checkpoint", str(ckpt), "--device", "cuda", "--precision", "int8")
    assert_clean_failure(int8, 1, "CPU precision")


@pytest.mark.parametrize("moments", [pytest.param(1), pytest.param(3, marks=pytest.mark.slow)])
def test_sigkill_mid_run_then_resume_scores_each_input_once(corpus, tmp_path, moments) -> None:
    images, ckpt, reference = corpus
    out = tmp_path / "killed.csv"  # rows counted as they land: a kill can fall inside a block's rows
    args = _ray_predict(images, ckpt, out, "--resume")
    seed = random.randrange(1 << 30)
    kills = sorted(random.Random(seed).sample(range(1, N_IMAGES), moments))
    for k in kills:
        assert run_spai_killed_at(args, out, k) is None, f"seed {seed}: the run ended before its kill at {k} rows"
    assert run_spai_killed_at(args, out, None) == 0
    _assert_scored_like_local(out, reference, 5e-7 + 1e-6)  # CSV rounds to 6 decimals
