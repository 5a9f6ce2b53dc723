"""The python-torch variant: a repository that runs the checkpoint itself in PyTorch (no export, no engines). Its
configs follow spai.model.specs and the device / precision asked for; the graph module (serving/models/torch_graph.py)
scores like the in-process torch route on the CPU; and the bundled tritonserver serving it answers the
probabilities of ``model.score_images`` (torch fp32 route) within 1e-5."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from helpers import parse_pbtxt as parse
from helpers import pbtxt_parameters as params

from serving.repository import AGGREGATOR, ENCODER, ENTRY, MODELS_DIR, TORCH_CHECKPOINT, build_torch_repository
from spai.errors import ServingError
from spai.infer.runners import Runner
from spai.model.specs import (
    ATTENTION,
    DEFAULT_OPT_BATCH,
    LOGITS,
    PATCH_FEATURES,
    PATCH_MASK,
    PATCHES,
    aggregator_spec,
    patch_encoder_spec,
)

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
pytest.importorskip("google.protobuf.text_format")




def kind(cfg) -> str:
    return model_config_pb2.ModelInstanceGroup.Kind.Name(cfg.instance_group[0].kind)


@pytest.fixture(scope="module")
def tiny_checkpoint(tiny_model, tmp_path_factory) -> Path:
    """The seeded spai-tiny model saved as our checkpoint (what both graph models of a repository load)."""
    import spai

    return spai.save_checkpoint(tiny_model, tmp_path_factory.mktemp("torch_ckpt") / "tiny.pth")


@pytest.fixture(scope="module")
def torch_repo(tiny_checkpoint, tmp_path_factory) -> Path:
    return build_torch_repository(tiny_checkpoint, tmp_path_factory.mktemp("torch_repo") / "models")


def test_cpu_configs_follow_the_specs_and_share_one_checkpoint(torch_repo, tiny_checkpoint, tiny_model):
    d = tiny_model.feature_dim
    for name, spec in ((ENCODER, patch_encoder_spec(d)), (AGGREGATOR, aggregator_spec(d))):
        cfg = parse(torch_repo / name / "config.pbtxt")
        assert (cfg.backend, cfg.platform, kind(cfg)) == ("python", "", "KIND_CPU")
        assert [(t.name, tuple(t.dims)) for t in cfg.input] == [(t.name, t.shape) for t in spec.inputs]
        assert [model_config_pb2.DataType.Name(t.data_type) for t in cfg.input] == [t.triton_dtype
                                                                                 for t in spec.inputs]
        assert [t.name for t in cfg.output] == [t.name for t in spec.outputs]  # attention included
        p = params(cfg)
        assert p["graph"] == ("patch_encoder" if name == ENCODER else "aggregator") and p["precision"] == "fp32"
        assert (torch_repo / name / p["checkpoint"]).resolve() == (torch_repo / TORCH_CHECKPOINT).resolve()
        assert (torch_repo / name / "1" / "model.py").read_bytes() == (MODELS_DIR / "torch_model.py").read_bytes()
    assert params(parse(torch_repo / ENCODER / "config.pbtxt"))["max_torch_batch"] == "32"
    assert (torch_repo / TORCH_CHECKPOINT).read_bytes() == tiny_checkpoint.read_bytes()
    entry = params(parse(torch_repo / ENTRY / "config.pbtxt"))
    assert entry["aggregator_attention"] == "True" and "calibration" not in entry


def test_gpu_configs_autocast_and_the_trt_tuning(tiny_checkpoint, tmp_path):
    root = build_torch_repository(tiny_checkpoint, tmp_path / "gpu", device="gpu", precision="bf16")
    enc, agg = (parse(root / m / "config.pbtxt") for m in (ENCODER, AGGREGATOR))
    assert (kind(enc), kind(agg)) == ("KIND_GPU", "KIND_GPU")
    assert params(enc)["precision"] == params(agg)["precision"] == "bf16"
    assert [enc.instance_group[0].count, agg.instance_group[0].count] == [2, 1]
    assert list(enc.dynamic_batching.preferred_batch_size) == [DEFAULT_OPT_BATCH]  # the trt tuning's
    assert "max_torch_batch" not in params(enc)  # one torch call per merged batch, up to max_batch_size
    assert parse(root / ENTRY / "config.pbtxt").instance_group[0].count == 4


def test_mistakes_are_refused_with_how_to_fix(tiny_checkpoint, tiny_onnx_dir, tmp_path):
    from serving.repository import build_repository

    with pytest.raises(ServingError, match="--device gpu"):
        build_torch_repository(tiny_checkpoint, tmp_path / "a", device="cpu", precision="fp16")
    with pytest.raises(ServingError, match="precision"):
        build_torch_repository(tiny_checkpoint, tmp_path / "b", device="gpu", precision="int8")
    with pytest.raises(ServingError, match="--checkpoint CKPT"):
        build_repository(tiny_onnx_dir, "python-torch", tmp_path / "c")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_calibrated_checkpoint_gives_the_entry_model_its_calibration(tiny_model, tmp_path):
    import spai
    from serving.bls import EntrySettings
    from spai.model.calibration import Calibration, OperatingPoint

    cal = Calibration("platt", 0.5, 0.25, (OperatingPoint("fpr0.05", 0.7), OperatingPoint("balanced", 0.45)),
                      "balanced")
    ckpt = spai.save_checkpoint(tiny_model, tmp_path / "calibrated.pth", calibration=cal.to_entry())
    root = build_torch_repository(ckpt, tmp_path / "repo")
    assert EntrySettings.from_parameters(params(parse(root / ENTRY / "config.pbtxt"))).calibration == cal


def test_spai_repository_builds_the_variant_from_a_checkpoint(tiny_checkpoint, tiny_onnx_dir, tmp_path, capsys):
    from spai_cli import main

    out = tmp_path / "repo"
    assert main(["repository", "--variant", "python-torch", "--checkpoint", str(tiny_checkpoint), "--device", "gpu",
                 "--encoder-instances", "3", "-o", str(out)]) == 0
    enc = parse(out / ENCODER / "config.pbtxt")
    assert (kind(enc), params(enc)["precision"], enc.instance_group[0].count) == ("KIND_GPU", "fp16", 3)
    capsys.readouterr()
    assert main(["repository", "--variant", "python-torch", "-o", str(tmp_path / "x")]) != 0
    assert "--checkpoint CKPT" in capsys.readouterr().err
    assert main(["repository", "--variant", "python-torch", "--artifacts", str(tiny_onnx_dir), "--checkpoint",
                 str(tiny_checkpoint), "-o", str(tmp_path / "y")]) != 0
    assert "instead of --artifacts" in capsys.readouterr().err
    assert main(["repository", "--variant", "python-ort", "--artifacts", str(tiny_onnx_dir), "--checkpoint",
                 str(tiny_checkpoint), "-o", str(tmp_path / "z")]) != 0
    assert "are for --variant python-torch" in capsys.readouterr().err


# ---- the graph module, without Triton ----------------------------------------------------------------------------

def graph_settings(repo: Path, model: str, **changes):
    from serving.models.torch_graph import GraphSettings

    cfg = parse(repo / model / "config.pbtxt")
    settings = GraphSettings.from_parameters(params(cfg), str(repo / model), cfg.max_batch_size)
    return dataclasses.replace(settings, **changes)


class GraphCall(Runner):
    """What a BLS call to one graph model amounts to: one feed through TorchGraph.infer, with the limits and input
    dtypes the `spai` model declares for it (uint8 patches)."""

    def __init__(self, graph, limits, dtypes=None):
        super().__init__(limits, dtypes)
        self.graph = graph

    def _infer(self, feed):
        return self.graph.infer([feed])[0]


def test_the_graphs_score_like_the_in_process_torch_route(torch_repo, tiny_model, generated_images):
    """The served computation on the CPU, without the server: the `spai` model's settings from its config, uint8
    patch chunks into the encoder graph, padded groups into the aggregator graph; equal to score_images."""
    from serving.bls import EntrySettings
    from serving.models.torch_graph import TorchGraph
    from spai.infer.scorer import Scorer

    s = EntrySettings.from_parameters(params(parse(torch_repo / ENTRY / "config.pbtxt")))
    enc = TorchGraph(graph_settings(torch_repo, ENCODER), "cpu")
    agg = TorchGraph(graph_settings(torch_repo, AGGREGATOR), "cpu")
    scorer = Scorer(GraphCall(enc, s.encoder_limits(), s.encoder_dtypes()), GraphCall(agg, s.aggregator_limits()),
                    limits=s.limits, spec=s.patch, calibration=s.calibration)
    got = scorer.score_images(generated_images)
    want = tiny_model.score_images(generated_images)
    assert [g.num_patches for g in got] == [w.num_patches for w in want]
    np.testing.assert_allclose([g.probability for g in got], [w.probability for w in want], atol=1e-5, rtol=0)
    np.testing.assert_allclose(got[0].attention, want[0].attention, atol=1e-5)


def rows_per_call(graph, feeds) -> list[int]:
    """The batch of every torch call ``graph.infer(feeds)`` makes."""
    calls, infer = [], graph.runner._infer

    def counted(feed):
        calls.append(len(next(iter(feed.values()))))
        return infer(feed)

    graph.runner._infer = counted
    try:
        graph.infer(feeds)
    finally:
        graph.runner._infer = infer
    return calls


def test_big_dynamic_batches_run_in_slices_of_max_torch_batch(torch_repo, tiny_model):
    from serving.models.torch_graph import TorchGraph
    from spai.infer.runners import TorchRunner

    enc = TorchGraph(graph_settings(torch_repo, ENCODER, max_rows=3), "cpu")
    rng = np.random.default_rng(0)
    feeds = [{PATCHES: rng.integers(0, 256, (n, 3, 224, 224), dtype=np.uint8)} for n in (5, 2, 1)]
    got = enc.infer(feeds)  # 8 rows: the feed of 5 is cut, the others share a call
    assert rows_per_call(enc, feeds) == [3, 2, 3]
    with TorchRunner(tiny_model, "patch_encoder", 8) as ref:
        for feed, out in zip(feeds, got, strict=True):
            want = ref.infer({PATCHES: feed[PATCHES].astype(np.float32) / 255})[PATCH_FEATURES]
            np.testing.assert_allclose(out[PATCH_FEATURES], want, atol=1e-5)
    agg = TorchGraph(graph_settings(torch_repo, AGGREGATOR, max_rows=2), "cpu")
    feats = rng.standard_normal((3, 4, tiny_model.feature_dim)).astype(np.float32)
    mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], bool)
    (out,) = agg.infer([{PATCH_FEATURES: feats, PATCH_MASK: mask}])
    assert rows_per_call(agg, [{PATCH_FEATURES: feats, PATCH_MASK: mask}]) == [2, 1]
    with TorchRunner(tiny_model, "aggregator") as ref:
        want = ref.infer({PATCH_FEATURES: feats, PATCH_MASK: mask})
    assert set(out) == {LOGITS, ATTENTION}
    np.testing.assert_allclose(out[LOGITS], want[LOGITS], atol=1e-6)
    np.testing.assert_allclose(out[ATTENTION], want[ATTENTION], atol=1e-6)


def test_autocast_runner_computes_in_low_precision(tiny_model):
    """One autocast runner (serving, spai predict --device cuda and benchmarks/gpu_check.py): bf16 autocast changes
    the features, a little; the aggregator stays fp32."""
    from serving.models.torch_graph import torch_runner

    patches = np.random.default_rng(1).random((2, 3, 224, 224), dtype=np.float32)
    assert not torch_runner(tiny_model, "patch_encoder").autocast
    low = torch_runner(tiny_model, "patch_encoder", "bf16")
    assert low.autocast and low.name == "torch:patch_encoder:bf16:autocast"
    fp32 = torch_runner(tiny_model, "patch_encoder").infer({PATCHES: patches})[PATCH_FEATURES]
    bf16 = low.infer({PATCHES: patches})[PATCH_FEATURES]
    assert bf16.dtype == np.float32
    gap = np.abs(bf16 - fp32).max() / np.abs(fp32).max()
    assert 1e-4 < gap < 0.1, gap


def test_graph_settings_and_devices_refuse_mistakes(torch_repo):
    import torch

    from serving.models.torch_graph import GraphSettings, TorchGraph, check_precision, device_from_instance

    good = params(parse(torch_repo / ENCODER / "config.pbtxt"))
    model_dir = str(torch_repo / ENCODER)
    for change, match in (({"graph": "vit"}, "graph='vit'"), ({"precision": "int8"}, "precision='int8'"),
                          ({"checkpoint": "../nowhere.pth"}, "nowhere.pth.*not found"),
                          ({"threads": "two"}, "threads='two' is not an integer")):
        with pytest.raises(ServingError, match=match):
            GraphSettings.from_parameters({**good, **change}, model_dir)
    assert device_from_instance("CPU", "0") == "cpu"
    if torch.cuda.is_available():
        assert device_from_instance("GPU", "0") == "cuda:0"
    else:
        with pytest.raises(ServingError, match="--device cpu"):
            device_from_instance("GPU", "0")
    check_precision("fp16", "cuda:0")
    with pytest.raises(ServingError, match="KIND_GPU"):
        check_precision("fp16", "cpu")
    with pytest.raises(ServingError, match="KIND_GPU"):
        TorchGraph(graph_settings(torch_repo, ENCODER, precision="bf16"), "cpu")


@pytest.mark.gpu
def test_a_gpu_instance_runs_fp16_autocast_close_to_fp32(torch_repo, tiny_model):
    from serving.models.torch_graph import TorchGraph

    enc = TorchGraph(graph_settings(torch_repo, ENCODER, precision="fp16"), "cuda:0")
    feed = {PATCHES: np.random.default_rng(2).integers(0, 256, (4, 3, 224, 224), dtype=np.uint8)}
    ((out,), (ref,)) = enc.infer([feed]), TorchGraph(graph_settings(torch_repo, ENCODER), "cpu").infer([feed])
    assert enc.runner.name == "torch:patch_encoder:fp16:autocast"
    np.testing.assert_allclose(out[PATCH_FEATURES], ref[PATCH_FEATURES], atol=0.05 * np.abs(ref[PATCH_FEATURES]).max())


# ---- served ------------------------------------------------------------------------------------------------------

@pytest.mark.triton
def test_served_probabilities_equal_score_images(torch_repo, tiny_model, generated_images):
    from serving.client import SpaiClient
    from serving.server import TritonServer, describe_repository

    assert describe_repository(torch_repo)[ENCODER]["kind"] == "KIND_CPU"
    want = {str(s.image): s for s in tiny_model.score_images(generated_images)}
    with TritonServer(torch_repo) as server:
        rows = SpaiClient(server.http_url).score_paths(generated_images, concurrency=4, progress=False)
    assert all(not r.error for r in rows), [r.error for r in rows if r.error]
    assert [r.num_patches for r in rows] == [want[r.image].num_patches for r in rows]
    np.testing.assert_allclose([r.probability for r in rows], [want[r.image].probability for r in rows],
                               atol=1e-5, rtol=0)
