"""engine.json (export/manifest.py): round trip, every refusal names both values, the engines' outputs (and
manifests written before they were recorded), which TensorRT a machine has, and when a plan loads on it. Pure: no
TensorRT, no GPU, no torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from export.manifest import (
    EngineManifest,
    check_tensorrt_version,
    manifest_from_profiles,
    outputs_from_onnx,
    read_manifest,
    runtime_tensorrt_version,
    write_manifest,
)
from spai.errors import ExportError
from spai.model.specs import MANIFEST_FILE, aggregator_spec, patch_encoder_spec, trt_profile

ROOT = Path(__file__).resolve().parents[2]
HAND_WRITTEN = ROOT / "tests" / "serving" / "data" / "engine.json"


def _manifest(**fields) -> EngineManifest:
    profiles = {"patch_encoder": trt_profile(patch_encoder_spec(96), 1, 8, 32),
                "aggregator": trt_profile(aggregator_spec(96), max_patches=128, max_images=4)}
    base = dict(tensorrt_version="10.13.0.35", gpu="NVIDIA H200", compute_capability="9.0", cuda_version="12.9",
                source="test", created="now")
    return manifest_from_profiles(profiles, 96, {"patch_encoder": "fp16", "aggregator": "fp32"}, **(base | fields))


def _export_dir(tmp_path: Path, data: dict, plans: bool = True) -> Path:
    (tmp_path / MANIFEST_FILE).write_text(json.dumps(data))
    if plans:  # placeholders: no plan can be built without TensorRT and a GPU
        for entry in data["engines"].values():
            (tmp_path / entry["file"]).write_bytes(b"placeholder plan")
    return tmp_path


def test_round_trip_keeps_the_shape_and_extra_keys(tmp_path):
    written = write_manifest(tmp_path, _manifest(extra={"tf32": False}))
    data = json.loads(written.read_text())
    assert set(data) >= {"format", "tensorrt_version", "gpu", "compute_capability", "cuda_version", "feature_dim",
                         "engines", "onnx_sha256", "source", "created"}
    assert data["engines"]["patch_encoder"] == {
        "file": "patch_encoder.plan", "precision": "fp16", "outputs": ["patch_features"],
        "profile": {"patches": [[1, 3, 224, 224], [8, 3, 224, 224], [32, 3, 224, 224]]}}
    assert data["engines"]["aggregator"]["outputs"] == ["logits", "attention"]  # the spec's, by default
    assert data["tf32"] is False
    for entry in data["engines"].values():
        (tmp_path / entry["file"]).write_bytes(b"x")
    back = read_manifest(tmp_path)
    assert back.to_json() == data and back.engines["aggregator"].max_batch() == 4


def test_hand_written_manifest_parses():
    manifest = EngineManifest.from_json(json.loads(HAND_WRITTEN.read_text()))
    manifest.check()
    enc = manifest.engines["patch_encoder"]
    assert (enc.max_batch(), enc.opt_shapes()["patches"][0]) == (192, 48)
    assert manifest.extra == {"builder_note": "an extra key, kept"}


def _edit(path: list, value) -> dict:
    data = json.loads(HAND_WRITTEN.read_text())
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return data


@pytest.mark.parametrize(("path", "value", "names"), [
    (["engines", "aggregator", "profile", "patch_mask"], [[1, 1], [2, 24], [8, 256]], ["[8, 512]", "[8, 256]"]),
    (["engines", "aggregator", "profile", "patch_features"], [[1, 1, 96], [2, 24, 96], [8, 512, 97]],
     ["97", "feature_dim is 96"]),
    (["feature_dim"], 1168, ["96", "1168"]),
    (["engines", "patch_encoder", "profile", "patches"], [[2, 3, 224, 224], [300, 3, 224, 224],
                                                          [192, 3, 224, 224]], ["opt [300", "max [192"]),
    (["engines", "patch_encoder", "profile", "patches"], [[1, 3, 112, 112]] * 3, ["112", "224"]),
    (["engines", "patch_encoder", "precision"], "fp12", ["fp12"]),
    (["format"], 2, ["format 2", "format 1"]),
    (["engines", "aggregator", "outputs"], ["logits", "heatmap"], ["heatmap", "'logits', 'attention'"]),
    (["engines", "aggregator", "outputs"], ["attention"], ["missing: ['logits']"]),
    (["engines", "patch_encoder", "outputs"], "patch_features", ["list of tensor names", "'patch_features'"]),
])
def test_inconsistent_manifests_are_refused_naming_both_values(tmp_path, path, value, names):
    with pytest.raises(ExportError) as err:
        read_manifest(_export_dir(tmp_path, _edit(path, value)))
    for name in names:
        assert name in str(err.value), str(err.value)


def test_aggregator_attention_is_read_from_the_outputs_and_unknown_in_older_manifests(tmp_path):
    assert _manifest().aggregator_attention() is True
    without = _manifest(outputs={"aggregator": ("logits",)})
    assert without.aggregator_attention() is False
    old = json.loads(HAND_WRITTEN.read_text())
    for entry in old["engines"].values():
        del entry["outputs"]
    manifest = read_manifest(_export_dir(tmp_path, old))
    assert manifest.aggregator_attention() is None and manifest.to_json()["engines"] == old["engines"]


def test_outputs_are_read_from_the_onnx_graphs(tmp_path):
    """What `spai export` records for the engines it builds (export.pipeline.manifest_for_engines)."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    def graph(path: Path, outputs: list[str]) -> Path:
        nodes = [helper.make_node("Identity", ["x"], [name]) for name in outputs]
        io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in outputs]
        onnx.save(helper.make_model(helper.make_graph(nodes, "g", [helper.make_tensor_value_info(
            "x", TensorProto.FLOAT, [1])], io)), str(path))
        return path

    found = outputs_from_onnx({"patch_encoder": graph(tmp_path / "e.onnx", ["patch_features"]),
                               "aggregator": graph(tmp_path / "a.onnx", ["logits"])})
    assert found == {"patch_encoder": ("patch_features",), "aggregator": ("logits",)}
    assert _manifest(outputs=found).aggregator_attention() is False


def test_missing_manifest_and_missing_plans(tmp_path):
    with pytest.raises(ExportError, match="missing export outputs.*engine.json"):
        read_manifest(tmp_path)
    data = json.loads(HAND_WRITTEN.read_text())
    _export_dir(tmp_path, data)
    (tmp_path / "aggregator.plan").unlink()
    with pytest.raises(ExportError, match="aggregator.plan"):
        read_manifest(tmp_path)


def test_runtime_version_from_env_and_libnvinfer(tmp_path):
    assert runtime_tensorrt_version({"TRT_VERSION": "10.13.0.35"}, ()) == ("10.13.0.35", "$TRT_VERSION")
    for name in ("libnvinfer.so.10", "libnvinfer.so.10.11.0", "libnvinfer.so.10.13.0", "libnvinfer.so.10.13.0.x"):
        (tmp_path / name).write_bytes(b"")
    assert runtime_tensorrt_version({}, (str(tmp_path),)) == ("10.13.0", str(tmp_path / "libnvinfer.so.10.13.0"))
    assert runtime_tensorrt_version({}, (str(tmp_path / "none"),)) is None


def test_plans_load_only_on_their_tensorrt_unless_version_compatible():
    plain = _manifest()
    check_tensorrt_version(plain, "10.13.0.35", "x")
    check_tensorrt_version(plain, "10.13", "x")  # compared on the components both give
    with pytest.raises(ExportError, match="built by TensorRT 10.13.0.35 but x is TensorRT 10.14.1.48"):
        check_tensorrt_version(plain, "10.14.1.48", "x")
    compatible = _manifest(version_compatible=True)
    check_tensorrt_version(compatible, "11.4.0.106", "x")
    with pytest.raises(ExportError, match="older TensorRT 10.12"):
        check_tensorrt_version(compatible, "10.12.0.36", "x")
    with pytest.raises(ExportError, match="not a TensorRT version"):
        check_tensorrt_version(plain, "latest", "x")


def test_manifest_module_is_light():
    code = "import sys, export.manifest, export.trt; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"
