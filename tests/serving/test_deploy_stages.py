"""The two stages of serving/deploy/Dockerfile, each run in a process that imports only what that stage installs
(tests/restricted_env.py): the engine-builder's ``spai export`` (``dependencies`` + the ``export`` extra) and, in
the serve stage (``--no-deps`` + the ``triton`` extra), what it and the deployment docs run there: ``spai
repository --variant trt`` over that real export, the pod launcher up to its exec of tritonserver, and the ``spai``
Triton model (its imports, ``initialize`` and one ``score_entry_batch`` over runners computing in numpy).

No plan can be built on a CPU machine: the export gets the engine.json ``manifest_from_profiles`` writes for the
profiles ``spai export`` builds with, and plan files that are bytes only (they are copied, never loaded).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import restricted_env as restricted  # tests/restricted_env.py
import yaml

from export.manifest import manifest_from_profiles, outputs_from_onnx, write_manifest
from spai.model.specs import aggregator_spec, patch_encoder_spec, trt_profile

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "serving" / "deploy"
TRT_VERSION = "10.13.0.35"  # the NGC serving container's $TRT_VERSION in these tests (the manifest's builder)



BUILDER = """
import sys
import export.cli, export.pipeline, export.trt  # what the builder stage imports besides `spai export`
import spai_cli
sys.exit(spai_cli.main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def builder_export(tmp_path_factory):
    """(the engine-builder process, its export folder): ``spai export spai-tiny -o DIR --onnx-only``."""
    out = tmp_path_factory.mktemp("builder") / "export"
    proc = restricted.run_restricted("engine-builder", ["-c", BUILDER, "export", "spai-tiny", "-o", str(out),
                                                        "--onnx-only", "--check-patches", "4"])
    return proc, out


@pytest.fixture(scope="module")
def trt_export(builder_export, tmp_path_factory) -> Path:
    """The builder's export plus what its GPU run would add (export.pipeline.manifest_for_engines): engine.json for
    the profiles it builds with and the outputs of the graphs the plans come from, and plan files (bytes)."""
    proc, src = builder_export
    # the ONNX files are written before the parity check: a later failure is the engine-builder test's to report
    graphs = [src / name for name in ("patch_encoder.onnx", "patch_encoder.fp16.onnx", "aggregator.onnx")]
    assert all(p.is_file() for p in graphs), f"the engine-builder export wrote no ONNX files:\n{proc.stderr[-3000:]}"
    art = tmp_path_factory.mktemp("trt") / "export"
    shutil.copytree(src, art)
    dim = 96  # spai-tiny
    profiles = {"patch_encoder": trt_profile(patch_encoder_spec(dim)), "aggregator": trt_profile(aggregator_spec(dim))}
    sources = {"patch_encoder": art / "patch_encoder.fp16.onnx", "aggregator": art / "aggregator.onnx"}
    write_manifest(art, manifest_from_profiles(
        profiles, dim, {"patch_encoder": "fp16", "aggregator": "fp32"}, outputs=outputs_from_onnx(sources),
        tensorrt_version=TRT_VERSION,
        gpu="NVIDIA H100 80GB HBM3", compute_capability="9.0", cuda_version="12.9", source="spai-tiny"))
    for graph in ("patch_encoder", "aggregator"):
        (art / f"{graph}.plan").write_bytes(f"plan bytes of {graph}".encode())
    return art


@pytest.fixture(scope="module")
def serve_repository(trt_export, tmp_path_factory):
    """(the serve-stage process, the repository): the Dockerfile's step 2, ``spai repository --artifacts /export
    --variant trt -o /repo``, in a container whose TensorRT is the plans' ($TRT_VERSION, as NGC sets it)."""
    repo = tmp_path_factory.mktemp("serve") / "repo"
    return _serve_repository_command(trt_export, repo), repo


def _built(serve_repository) -> Path:
    proc, repo = serve_repository
    assert proc.returncode == 0, f"`spai repository --variant trt` failed in the serve stage:\n{proc.stderr[-3000:]}"
    return repo


def test_engine_builder_stage_exports_with_only_the_base_dependencies_and_the_export_extra(builder_export):
    proc, out = builder_export
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("patch_encoder.onnx", "patch_encoder.fp16.onnx", "aggregator.onnx", "export_report.json"):
        assert (out / name).is_file(), name
    # and no file of the project tried an import the stage lacks (an optional one would fail silently)
    assert restricted.project_refusals(proc.stderr) == {}, proc.stderr[-2000:]


def test_serve_stage_builds_the_trt_repository_from_a_real_export(serve_repository, trt_export):
    repo = _built(serve_repository)
    # only the deliberate probes: onnx for the cross-check with aggregator.onnx, tensorrt for the runtime's version
    assert restricted.project_refusals(serve_repository[0].stderr) == {"onnx": ["serving/repository.py"],
                                                                       "tensorrt": ["export/trt.py"]}
    for model in ("spai", "spai_patch_encoder", "spai_aggregator"):
        assert (repo / model / "config.pbtxt").is_file(), model
    assert (repo / "spai_aggregator" / "1" / "model.plan").read_bytes() == b"plan bytes of aggregator"
    assert json.loads((repo / "engine.json").read_text()) == json.loads((trt_export / "engine.json").read_text())
    entry = (repo / "spai" / "config.pbtxt").read_text()
    assert 'key: "aggregator_attention" value { string_value: "True" }' in entry  # the export has attention
    assert "name: \"attention\"" in (repo / "spai_aggregator" / "config.pbtxt").read_text()


def _serve_repository_command(art: Path, out: Path, variant: str = "trt"):
    return restricted.run_restricted("serve", ["-m", "spai_cli", "repository", "--artifacts", str(art), "--variant",
                                               variant, "-o", str(out)],
                                     env={"PATH": "/usr/bin:/bin", "TRT_VERSION": TRT_VERSION})


def test_serve_stage_refuses_an_older_manifest_without_outputs_saying_how_to_fix(trt_export, tmp_path):
    """engine.json of an export made before it recorded the engines' outputs, in an image that cannot read
    aggregator.onnx: a message with the fix, no traceback (with onnx installed it falls back to aggregator.onnx:
    tests/serving/test_trt_repository.py)."""
    art = tmp_path / "export"
    shutil.copytree(trt_export, art)
    data = json.loads((art / "engine.json").read_text())
    for entry in data["engines"].values():
        del entry["outputs"]
    (art / "engine.json").write_text(json.dumps(data))
    proc = _serve_repository_command(art, tmp_path / "repo")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "the onnx package that would read aggregator.onnx is not installed here" in proc.stderr
    assert '"outputs": ["logits", "attention"]' in proc.stderr and not (tmp_path / "repo").exists()


def test_serve_stage_says_the_onnx_variants_need_the_onnx_package(trt_export, tmp_path):
    proc = _serve_repository_command(trt_export, tmp_path / "repo", "python-ort")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "needs the onnx package: pip install onnx" in proc.stderr


def _commands() -> dict[str, list[str]]:
    """The launcher's command lines in the image and the manifests, ``/models`` / ``/mnt/models`` kept."""
    cmd = re.search(r"^CMD (\[.*\])$", (DEPLOY / "Dockerfile").read_text(), re.M)
    assert cmd, "serving/deploy/Dockerfile has no CMD [...]"
    (dep,) = [d for d in yaml.safe_load_all((DEPLOY / "k8s" / "deployment.yaml").read_text()) if d]
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    (isvc,) = [d for d in yaml.safe_load_all((DEPLOY / "kserve" / "inferenceservice.yaml").read_text()) if d]
    model = isvc["spec"]["predictor"]["model"]
    # the kserve-tritonserver runtime's own arguments come first (tritonserver --model-store=/mnt/models ...)
    return {"dockerfile-cmd": json.loads(cmd.group(1)), "k8s": [*container["command"], *container["args"]],
            "kserve": [*model["command"], "tritonserver", "--model-store=/mnt/models", *model["args"]]}


@pytest.mark.parametrize("where", ["dockerfile-cmd", "k8s", "kserve"])
def test_serve_stage_launcher_execs_tritonserver_for_the_repository(serve_repository, tmp_path, where):
    """serving/deploy/tritonserver.py as the image and the manifests start it, up to its exec: a fake
    `tritonserver` on PATH records the argv and environment it gets."""
    repo = _built(serve_repository)
    python, script, *args = _commands()[where]
    assert (python, script) == ("python3", "/opt/spai-deploy/serving/deploy/tritonserver.py")
    args = [a.replace("=/mnt/models", f"={repo}").replace("=/models", f"={repo}") for a in args]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "tritonserver"
    fake.write_text(f'#!/bin/sh\nprintf "%s\\n" "$0" "$@" > {tmp_path}/argv\nenv > {tmp_path}/env\n')
    fake.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "TRT_VERSION": TRT_VERSION, "SPAI_CPU_REQUEST_MILLI": "4000"}
    proc = restricted.run_restricted("serve", [str(DEPLOY / "tritonserver.py"), *args], env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    argv = (tmp_path / "argv").read_text().splitlines()
    expected = [a for a in args if a != "tritonserver"]  # the launcher drops KServe's leading `tritonserver`
    assert argv[0] == str(fake) and argv[1:1 + len(expected)] == expected, argv
    assert any(a.startswith("--backend-config=python,shm-default-byte-size=") for a in argv)
    child_env = dict(line.split("=", 1) for line in (tmp_path / "env").read_text().splitlines() if "=" in line)
    cpu_instances = sum(int(n) for n in re.findall(r"count: (\d+) kind: KIND_CPU",
                                                   "".join(p.read_text() for p in repo.glob("*/config.pbtxt"))))
    assert child_env["OMP_NUM_THREADS"] == str(max(1, 4 // cpu_instances)) and child_env["MALLOC_ARENA_MAX"] == "2"


MODEL_RUN = r"""
import asyncio, importlib.util, json, re, sys
from pathlib import Path

import numpy as np

from serving.bls import pack_scores, score_entry_batch
from spai.infer.runners import Runner
from spai.model.specs import ATTENTION, LOGITS, PATCH_FEATURES, PATCH_MASK, PATCHES

repo, dim, paths = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
spec = importlib.util.spec_from_file_location("spai_model", repo / "spai" / "1" / "model.py")  # as the backend does
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
config = (repo / "spai" / "config.pbtxt").read_text()
params = dict(re.findall(r'key: "([^"]+)" value \{ string_value: "([^"]*)" \}', config))
model = module.TritonPythonModel()
model.initialize({"model_config": json.dumps({"parameters": {k: {"string_value": v} for k, v in params.items()}})})
calls = {"encoder": [], "aggregator": []}


class NumpyEncoder(Runner):
    # a patch's channel means, spread over D features
    def _infer(self, feed):
        patches = feed[PATCHES]
        assert patches.dtype == np.uint8, patches.dtype
        calls["encoder"].append(len(patches))
        means = patches.reshape(len(patches), 3, -1).mean(-1, dtype=np.float32) / 255
        return {PATCH_FEATURES: means @ np.linspace(-1, 1, 3 * dim, dtype=np.float32).reshape(3, dim)}


class NumpyAggregator(Runner):
    # the masked mean of the features' means; attention uniform over the real patches
    def _infer(self, feed):
        feats, mask = feed[PATCH_FEATURES], feed[PATCH_MASK].astype(np.float32)
        calls["aggregator"].append(list(feats.shape[:2]))
        count = np.maximum(mask.sum(1, keepdims=True), 1)
        return {LOGITS: (feats.mean(-1) * mask).sum(1, keepdims=True) / count, ATTENTION: mask / count}


runners = [cls(r.limits, r.input_dtypes, r.minimums) for cls, r in ((NumpyEncoder, model.encoder),
                                                                      (NumpyAggregator, model.aggregator))]
requests = [[Path(p).read_bytes()] for p in paths] + [[b"not an image"]]
results, pixels = asyncio.run(score_entry_batch(requests, [None] * len(requests), model.settings, *runners))
out = []
for result in results:
    if isinstance(result, BaseException):
        out.append({"error": type(result).__name__})
        continue
    packed = pack_scores(result, True)
    out.append({"probability": float(packed["probability"][0, 0]), "logit": float(packed["logit"][0, 0]),
                "num_patches": int(packed["num_patches"][0, 0]),
                "attention_sum": float(packed["patch_attention"][0].sum())})
print(json.dumps({"results": out, "calls": calls, "pixels": pixels, "chunk": model.settings.encoder_chunk,
                  "min_batch": model.settings.encoder_min_batch}))
"""


def test_serve_stage_runs_the_spai_model_over_numpy_runners(serve_repository, generated_images, tmp_path):
    """The generated repository's `spai` model imports with only the Python backend's module added (a stand-in),
    initializes from its config's parameters and scores one batch through serving.bls.score_entry_batch."""
    repo = _built(serve_repository)
    stand_in = tmp_path / "triton_python_backend_utils.py"
    stand_in.write_text('"""Stand-in for the module the Python backend provides; the model only imports it here."""\n')
    images = sorted(generated_images, key=lambda p: p.stat().st_size)[:2]
    proc = restricted.run_restricted("serve", ["-c", MODEL_RUN, str(repo), "96", *map(str, images)],
                                     stand_ins=[stand_in])
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    *good, bad = report["results"]
    assert bad == {"error": "ImageError"}
    for score in good:
        assert score["num_patches"] >= 1 and score["attention_sum"] == pytest.approx(1, abs=1e-5)
        assert score["probability"] == pytest.approx(1 / (1 + 2.718281828459045 ** -score["logit"]), rel=1e-5)
    assert sum(report["calls"]["encoder"]) >= sum(s["num_patches"] for s in good)
    assert all(report["min_batch"] <= n <= report["chunk"] for n in report["calls"]["encoder"])
    assert report["pixels"] > 0
