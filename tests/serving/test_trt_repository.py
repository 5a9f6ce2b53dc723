"""``spai repository --variant trt`` from the engines' engine.json: configs follow the profiles the plans were built
with (finding 2: Triton refuses max_batch_size / warm-up beyond the engine), inconsistent manifests, missing plans
and plans of another TensorRT are refused naming both values, version-compatible plans get the backend option.

No plan can be built on a CPU machine: the export directory holds the hand-written tests/serving/data/engine.json
(non-default profiles) and placeholder plan files (their bytes are only copied)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import parse_pbtxt as parse

from serving.bls import EntrySettings
from serving.repository import AGGREGATOR, ENCODER, ENTRY, SERVER_ARGS_FILE, VERSION_COMPATIBLE_ARG, build_repository
from spai.errors import ServingError

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
pytest.importorskip("google.protobuf.text_format")

ROOT = Path(__file__).resolve().parents[2]
HAND_WRITTEN = Path(__file__).resolve().parent / "data" / "engine.json"



def export_dir(tmp_path: Path, edit=None) -> Path:
    art = tmp_path / "export"
    art.mkdir()
    data = json.loads(HAND_WRITTEN.read_text())
    if edit:
        edit(data)
    (art / "engine.json").write_text(json.dumps(data))
    for name in ("patch_encoder.plan", "aggregator.plan"):
        (art / name).write_bytes(f"placeholder {name}".encode())
    return art


def test_configs_follow_a_hand_written_manifest_with_non_default_profiles(tmp_path):
    root = build_repository(export_dir(tmp_path), "trt", tmp_path / "repo", tensorrt_version="10.13.0.35")
    enc, agg = parse(root / ENCODER / "config.pbtxt"), parse(root / AGGREGATOR / "config.pbtxt")
    assert (enc.platform, enc.max_batch_size, agg.max_batch_size) == ("tensorrt_plan", 192, 8)
    assert list(enc.input[0].dims) == [3, 224, 224] and list(agg.input[0].dims) == [-1, 96]
    (warm_enc,), (warm_agg,) = enc.model_warmup, agg.model_warmup
    assert warm_enc.batch_size == 48 and list(warm_enc.inputs["patches"].dims) == [3, 224, 224]
    # the batcher prefers the batch the engine was tuned at (its profile's opt), and the entry sends chunks of it
    assert list(enc.dynamic_batching.preferred_batch_size) == [48]
    assert warm_agg.batch_size == 2
    assert {k: list(v.dims) for k, v in warm_agg.inputs.items()} == {"patch_features": [24, 96], "patch_mask": [24]}
    entry = {k: v.string_value for k, v in parse(root / ENTRY / "config.pbtxt").parameters.items()}
    assert (entry["encoder_chunk"], entry["aggregator_batch"], entry["max_patches"]) == ("48", "8", "512")
    settings = EntrySettings.from_parameters(entry)  # what the spai model reads back
    assert settings.encoder_limits()["patches"][0] <= enc.max_batch_size
    assert settings.aggregator_limits()["patch_features"][:2] == (8, 512)
    assert (root / ENCODER / "1" / "model.plan").read_bytes() == b"placeholder patch_encoder.plan"
    assert json.loads((root / "engine.json").read_text())["feature_dim"] == 96
    assert not (root / SERVER_ARGS_FILE).exists()


def test_version_compatible_plans_get_the_backend_option(tmp_path):
    art = export_dir(tmp_path, lambda d: d.update(version_compatible=True))
    root = build_repository(art, "trt", tmp_path / "repo", tensorrt_version="11.4.0.106")
    assert (root / SERVER_ARGS_FILE).read_text().split() == [VERSION_COMPATIBLE_ARG]
    with pytest.raises(ServingError, match="older TensorRT 10.12"):
        build_repository(art, "trt", tmp_path / "repo2", tensorrt_version="10.12.0.36")


@pytest.mark.parametrize(("edit", "names"), [
    (lambda d: d["engines"]["aggregator"]["profile"].update(patch_mask=[[1, 1], [2, 24], [4, 512]]),
     ["[8, 512]", "[4, 512]"]),
    (lambda d: d.update(feature_dim=1168), ["96", "1168"]),
    (lambda d: d["engines"]["patch_encoder"].update(file="missing.plan"), ["missing.plan"]),
])
def test_inconsistent_manifests_and_missing_plans_are_refused(tmp_path, edit, names):
    with pytest.raises(ServingError) as err:
        build_repository(export_dir(tmp_path, edit), "trt", tmp_path / "repo", tensorrt_version="10.13.0.35")
    assert all(n in str(err.value) for n in names), str(err.value)
    assert not (tmp_path / "repo").exists()  # refused before anything is written


def test_feature_dim_disagreements_are_refused(tmp_path, tiny_onnx_dir):
    art = export_dir(tmp_path)
    with pytest.raises(ServingError, match="--feature-dim 1168 disagrees.*96"):
        build_repository(art, "trt", tmp_path / "repo", feature_dim=1168, tensorrt_version="10.13.0.35")
    shutil.copyfile(tiny_onnx_dir / "aggregator.onnx", art / "aggregator.onnx")  # D = 96: agrees
    build_repository(art, "trt", tmp_path / "repo", tensorrt_version="10.13.0.35")
    data = json.loads((art / "engine.json").read_text())
    data["feature_dim"] = 48
    for shapes in data["engines"]["aggregator"]["profile"]["patch_features"]:
        shapes[-1] = 48
    (art / "engine.json").write_text(json.dumps(data))
    with pytest.raises(ServingError, match="aggregator.onnx has feature dimension 96 but engine.json says 48"):
        build_repository(art, "trt", tmp_path / "repo3", tensorrt_version="10.13.0.35")


def test_attention_comes_from_engine_json_and_must_agree_with_aggregator_onnx(tmp_path, tiny_onnx_dir):
    """The Triton image cannot read aggregator.onnx (no onnx package): engine.json's aggregator outputs say whether
    the engine has `attention`; where aggregator.onnx can be read, the two must agree."""
    art = export_dir(tmp_path, lambda d: d["engines"]["aggregator"].update(outputs=["logits"]))
    root = build_repository(art, "trt", tmp_path / "repo", tensorrt_version="10.13.0.35")
    assert [o.name for o in parse(root / AGGREGATOR / "config.pbtxt").output] == ["logits"]
    entry = parse(root / ENTRY / "config.pbtxt")
    assert entry.parameters["aggregator_attention"].string_value == "False"
    shutil.copyfile(tiny_onnx_dir / "aggregator.onnx", art / "aggregator.onnx")  # it has attention
    with pytest.raises(ServingError, match=r"aggregator.onnx has the attention output but engine.json's aggregator "
                                           r"outputs are \['logits'\]"):
        build_repository(art, "trt", tmp_path / "repo2", tensorrt_version="10.13.0.35")


def test_an_old_manifest_without_outputs_falls_back_to_aggregator_onnx_or_says_how_to_fix(tmp_path, tiny_onnx_dir):
    def old(data):
        for entry in data["engines"].values():
            del entry["outputs"]

    art = export_dir(tmp_path, old)
    with pytest.raises(ServingError) as err:
        build_repository(art, "trt", tmp_path / "repo", tensorrt_version="10.13.0.35")
    assert "no aggregator.onnx" in str(err.value) and '"outputs": ["logits", "attention"]' in str(err.value)
    assert not (tmp_path / "repo").exists()
    shutil.copyfile(tiny_onnx_dir / "aggregator.onnx", art / "aggregator.onnx")
    root = build_repository(art, "trt", tmp_path / "repo", tensorrt_version="10.13.0.35")
    assert [o.name for o in parse(root / AGGREGATOR / "config.pbtxt").output] == ["logits", "attention"]


def test_max_patches_beyond_the_engine_is_refused(tmp_path):
    from spai.infer.prepare import InputLimits

    settings = EntrySettings(limits=InputLimits(max_patches=2048))
    with pytest.raises(ServingError, match="max_patches 2048 exceeds the aggregator engine's largest patch count 512"):
        build_repository(export_dir(tmp_path), "trt", tmp_path / "repo", settings=settings,
                         tensorrt_version="10.13.0.35")


def test_cli_refuses_plans_of_another_tensorrt(tmp_path):
    art = export_dir(tmp_path)
    cmd = [sys.executable, "-m", "spai_cli", "repository", "--artifacts", str(art), "--variant", "trt", "-o",
           str(tmp_path / "repo")]
    r = subprocess.run([*cmd, "--tensorrt-version", "10.14.1.48"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "built by TensorRT 10.13.0.35" in r.stderr and "10.14.1.48" in r.stderr
    ok = subprocess.run([*cmd, "--tensorrt-version", "10.13.0.35"], capture_output=True, text=True, cwd=ROOT)
    assert ok.returncode == 0, ok.stderr
    # inside a container whose TensorRT can be read (NGC containers set TRT_VERSION), no flag is needed
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "TRT_VERSION": "10.14.1.48"}
    r = subprocess.run(cmd + ["-o", str(tmp_path / "repo2")], capture_output=True, text=True, cwd=ROOT, env=env)
    assert r.returncode == 1 and "$TRT_VERSION" in r.stderr, r.stderr
