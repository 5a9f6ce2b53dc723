"""The restricted-process harness (tests/restricted_env.py) itself: what a stage installs is read from the
Dockerfile and pyproject.toml, a module outside it fails to import as in the image, one inside imports."""

from __future__ import annotations

import json
from pathlib import Path

import restricted_env as restricted  # tests/restricted_env.py

ROOT = Path(__file__).resolve().parents[1]



TRY_IMPORTS = """
import importlib, importlib.metadata, json, sys
found = {}
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
        found[name] = "imported"
    except ModuleNotFoundError as e:
        found[name] = f"ModuleNotFoundError {e.name}"
versions = {}
for dist in ("numpy", "onnx"):
    try:
        versions[dist] = bool(importlib.metadata.version(dist))
    except importlib.metadata.PackageNotFoundError:
        versions[dist] = False
print(json.dumps({"imports": found, "metadata": versions}))
"""


def test_stage_requirements_are_read_from_pyproject_as_the_dockerfile_installs_them(tmp_path):
    project = restricted._pyproject()["project"]
    extras = project["optional-dependencies"]
    assert restricted.stage_requirements("serve") == extras["triton"]  # --no-deps, then the extra's list
    assert restricted.stage_requirements("engine-builder") == project["dependencies"] + extras["export"]
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text('FROM base AS plain\nRUN pip install /opt/spai-deploy\n'
                          'FROM base AS two\nRUN pip install --no-cache-dir \\\n    "/opt/spai-deploy[export,train]"\n')
    assert restricted.stage_requirements("plain", dockerfile) == project["dependencies"]
    assert restricted.stage_requirements("two", dockerfile) == project["dependencies"] + extras["export"] + extras[
        "train"]
    builder, missing = restricted.distribution_closure(restricted.stage_requirements("engine-builder"))
    assert not missing and {"torch", "onnx", "sympy", "protobuf"} <= builder  # sympy, protobuf: transitive
    assert not builder & {"scikit-learn", "matplotlib", "tritonclient", "nvidia-pytriton", "pytest"}
    serve, missing = restricted.distribution_closure(extras["triton"])
    # the serve image parses Triton configs with tritonclient's model_config_pb2 (protobuf): and nothing heavy
    assert not missing and {"numpy", "pillow", "tritonclient", "protobuf"} <= serve
    assert not serve & {"torch", "onnx", "onnxruntime", "scikit-learn", "matplotlib", "nvidia-pytriton"}


def test_a_module_outside_the_stage_fails_to_import_and_one_inside_imports():
    names = ["numpy", "PIL.Image", "json", "spai.model.specs", "serving.repository", "export.manifest",  # allowed
             "onnx", "onnx.helper", "torch", "benchmarks", "tests", "triton_python_backend_utils"]  # refused
    proc = restricted.run_restricted("serve", ["-c", TRY_IMPORTS, *names])
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["imports"] == {**{n: "imported" for n in names[:6]}, "onnx": "ModuleNotFoundError onnx",
                                 "onnx.helper": "ModuleNotFoundError onnx", "torch": "ModuleNotFoundError torch",
                                 "benchmarks": "ModuleNotFoundError benchmarks", "tests": "ModuleNotFoundError tests",
                                 "triton_python_backend_utils": "ModuleNotFoundError triton_python_backend_utils"}
    assert report["metadata"] == {"numpy": True, "onnx": False}  # nor is its metadata there
    failed = restricted.run_restricted("serve", ["-c", "import serving.repository\nimport onnx"])
    assert failed.returncode == 1 and "ModuleNotFoundError: No module named 'onnx'" in failed.stderr
    assert "the serve stage of serving/deploy/Dockerfile does not install 'onnx'" in failed.stderr
    assert restricted.refused_imports(failed.stderr)["onnx"] == ["<string>"]


def test_a_stand_in_is_importable_under_its_own_name_only(tmp_path):
    stand_in = tmp_path / "triton_python_backend_utils.py"
    stand_in.write_text("NAME = 'stand-in'\n")
    (tmp_path / "neighbour.py").write_text("")
    proc = restricted.run_restricted("serve", ["-c", TRY_IMPORTS, "triton_python_backend_utils", "neighbour"],
                                     stand_ins=[stand_in])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["imports"] == {"triton_python_backend_utils": "imported",
                                                  "neighbour": "ModuleNotFoundError neighbour"}
