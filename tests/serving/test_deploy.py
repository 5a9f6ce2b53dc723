"""Kubernetes / KServe manifests: schema-valid (kubernetes-validate, offline) with probes and metrics wired."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
import yaml

kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate (the serve extra)")

DEPLOY = Path(__file__).resolve().parents[2] / "serving" / "deploy"
KSERVE_ONLY = {"modelFormat", "runtime", "storageUri", "protocolVersion", "storage"}


def load(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def validate(doc: dict) -> None:
    kv.validate(doc, kv.latest_version(), strict=True)


@pytest.mark.parametrize("path", sorted((DEPLOY / "k8s").glob("*.yaml")), ids=lambda p: p.name)
def test_manifests_are_schema_valid(path):
    for doc in load(path):
        validate(doc)


def test_deployment_probes_ports_metrics_gpu():
    (dep,) = load(DEPLOY / "k8s" / "deployment.yaml")
    pod = dep["spec"]["template"]
    (c,) = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}
    assert c["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert f"--metrics-port={ports['metrics']}" in c["args"] and "--model-repository=/models" in c["args"]
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(ports["metrics"])
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    (svc,) = load(DEPLOY / "k8s" / "service.yaml")
    assert {p["targetPort"] for p in svc["spec"]["ports"]} == set(ports)


def test_kserve_inferenceservice():
    (isvc,) = load(DEPLOY / "kserve" / "inferenceservice.yaml")
    assert (isvc["apiVersion"], isvc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    model = isvc["spec"]["predictor"]["model"]
    assert model["modelFormat"]["name"] == "triton" and model["storageUri"]
    assert model["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert model["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert isvc["metadata"]["annotations"]["serving.kserve.io/enable-prometheus-scraping"] == "true"
    # KServe's ModelSpec embeds a core/v1 Container: validate those fields with the Kubernetes schema.
    container = {k: v for k, v in model.items() if k not in KSERVE_ONLY} | {"name": "kserve-container"}
    validate({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "spai"}, "spec": {"containers": [container]}})


# ---- issue 12: /dev/shm in KServe, the HPA on queue time per `spai` request, threads per CPU instance -----------

REPO = Path(__file__).resolve().parents[2] / "serving" / "triton_models"


def _predictor_pod(isvc: dict) -> dict:
    """KServe's predictor embeds a core/v1 PodSpec (volumes, ...) and its model a Container."""
    pred = isvc["spec"]["predictor"]
    container = {k: v for k, v in pred["model"].items() if k not in KSERVE_ONLY} | {"name": "kserve-container"}
    pod_fields = {k: v for k, v in pred.items() if k not in {"model", "minReplicas", "maxReplicas"}}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "spai"},
            "spec": {**pod_fields, "containers": [container]}}


def _shm(pod_spec: dict, container: dict) -> dict:
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/dev/shm")
    return next(v for v in pod_spec["volumes"] if v["name"] == mount["name"])


def test_memory_backed_dev_shm_in_both_routes():
    (dep,) = load(DEPLOY / "k8s" / "deployment.yaml")
    pod = dep["spec"]["template"]["spec"]
    (isvc,) = load(DEPLOY / "kserve" / "inferenceservice.yaml")
    kserve = _predictor_pod(isvc)
    validate(kserve)
    for spec, container in ((pod, pod["containers"][0]), (kserve["spec"], kserve["spec"]["containers"][0])):
        assert _shm(spec, container)["emptyDir"] == {"medium": "Memory", "sizeLimit": "2Gi"}


def _queue_delays_us() -> dict[str, int]:
    delays = {}
    for cfg in REPO.glob("*/config.pbtxt"):
        found = re.search(r"max_queue_delay_microseconds:\s*(\d+)", cfg.read_text())
        delays[cfg.parent.name] = int(found.group(1)) if found else 0
    return delays


def test_hpa_scales_on_queue_time_per_spai_request_above_the_batching_delays():
    (hpa,) = load(DEPLOY / "k8s" / "hpa.yaml")
    (metric,) = hpa["spec"]["metrics"]
    target = int(metric["pods"]["target"]["averageValue"])
    assert target > 2 * max(_queue_delays_us().values())  # light load sits at <= the delay; never at maxReplicas
    (adapter,) = load(DEPLOY / "k8s" / "prometheus-adapter.yaml")
    (rule,) = yaml.safe_load(adapter["data"]["config.yaml"])["rules"]
    assert rule["name"]["as"] == metric["pods"]["metric"]["name"]
    assert 'model="spai"' in rule["seriesQuery"] and "nv_inference_queue_duration_us" in rule["seriesQuery"]
    query = rule["metricsQuery"]
    assert query.count('model="spai"') == 2 and "nv_inference_request_success" in query  # per request, spai only
    assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}


def _env(container: dict) -> dict:
    return {e["name"]: e for e in container.get("env", [])}


def test_threads_per_instance_follow_the_cpu_request():
    from serving.deploy.tritonserver import CPU_REQUEST_VARIABLE, cpu_instances, server_command
    from serving.repository import TUNING

    (dep,) = load(DEPLOY / "k8s" / "deployment.yaml")
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    (isvc,) = load(DEPLOY / "kserve" / "inferenceservice.yaml")
    model = isvc["spec"]["predictor"]["model"]
    for container, name in ((c, c["name"]), (model, "kserve-container")):
        ref = _env(container)[CPU_REQUEST_VARIABLE]["valueFrom"]["resourceFieldRef"]
        assert ref == {"containerName": name, "resource": "requests.cpu", "divisor": "1m"}
        assert container["command"][-1].endswith("serving/deploy/tritonserver.py")
    request_milli = int(float(c["resources"]["requests"]["cpu"]) * 1000)
    instances = TUNING["trt"].entry_instances
    assert cpu_instances(REPO) == instances  # the `spai` Python model; the TensorRT models are KIND_GPU
    command, env = server_command(["tritonserver", f"--model-store={REPO}", *c["args"][1:]],
                                  {CPU_REQUEST_VARIABLE: str(request_milli), "MKL_NUM_THREADS": "3"})
    assert command[:2] == ["tritonserver", f"--model-store={REPO}"]
    assert env["OMP_NUM_THREADS"] == env["OPENBLAS_NUM_THREADS"] == str(max(1, request_milli // 1000 // instances))
    assert env["MKL_NUM_THREADS"] == "3"  # set explicitly: kept


def test_launcher_adds_repository_arguments_and_refuses_plans_of_another_tensorrt(tmp_path):
    from serving.deploy.tritonserver import server_command

    repo = tmp_path / "repo"
    shutil.copytree(REPO, repo)
    manifest = json.loads((Path(__file__).parent / "data" / "engine.json").read_text())
    (repo / "engine.json").write_text(json.dumps(manifest))
    (repo / "tritonserver.args").write_text("--backend-config=tensorrt,version-compatible=true\n")
    command, env = server_command([f"--model-repository={repo}"], {"TRT_VERSION": "10.13.0.35"})
    assert "--backend-config=tensorrt,version-compatible=true" in command and "OMP_NUM_THREADS" not in env
    with pytest.raises(SystemExit, match="built by TensorRT 10.13.0.35 but this container.*10.14.1.48"):
        server_command([f"--model-repository={repo}"], {"TRT_VERSION": "10.14.1.48"})
    with pytest.raises(SystemExit, match="--model-repository"):
        server_command(["--http-port=8000"], {})


def test_dockerfile_builds_engines_and_serves_with_one_release(tmp_path):
    text = (DEPLOY / "Dockerfile").read_text()
    release = re.search(r"^ARG RELEASE=(\S+)", text, re.M).group(1)
    stages = re.findall(r"^FROM (\S+) AS (\S+)", text, re.M)
    assert stages == [("nvcr.io/nvidia/tensorrt:${RELEASE}-py3", "engine-builder"),
                      ("nvcr.io/nvidia/tritonserver:${RELEASE}-py3", "serve")], stages
    assert re.fullmatch(r"\d\d\.\d\d", release)
    serve = text.split(" AS serve", 1)[1]
    assert "--no-deps" in serve and "[serve]" not in serve and "torch" not in serve.replace("no PyPI torch", "")
    ignore = (DEPLOY.parents[1] / ".dockerignore").read_text().split()
    assert {".venv", ".git", "*.plan", "*.onnx"} <= set(ignore)


def test_launcher_starts_tritonserver_with_the_memory_options_spai_serve_uses(tmp_path):
    """The pod runs with the same Python-backend pools and glibc settings as `spai serve` (ServerOptions), unless
    the pod's arguments or environment set them."""
    from serving.deploy.tritonserver import server_command
    from serving.server import ServerOptions

    options = ServerOptions()
    command, env = server_command(["tritonserver", f"--model-store={REPO}"], {})
    for arg in options.backend_config():
        assert command.count(arg) == 1, arg
    assert not any("shm-region-prefix-name" in a for a in command)  # one server per pod: the backend's own prefix
    assert all(env[k] == v for k, v in options.environment().items()) and env["MALLOC_ARENA_MAX"] == "2"
    mine = "--backend-config=python,shm-default-byte-size=1048576"
    command, env = server_command(["tritonserver", f"--model-store={REPO}", mine], {"MALLOC_ARENA_MAX": "4"})
    assert [a for a in command if "shm-default-byte-size" in a] == [mine] and env["MALLOC_ARENA_MAX"] == "4"
    free = os.statvfs("/dev/shm").f_bavail * os.statvfs("/dev/shm").f_frsize
    with pytest.raises(SystemExit, match="Python-backend instances need .*--shm-size"):
        server_command([f"--model-store={REPO}", f"--backend-config=python,shm-default-byte-size={free}"], {})
    with pytest.raises(SystemExit, match="whole number of bytes"):
        server_command([f"--model-store={REPO}", "--backend-config=python,shm-default-byte-size=128M"], {})
