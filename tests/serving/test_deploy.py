"""Kubernetes / KServe manifests: schema-valid (kubernetes-validate, offline) with probes and metrics wired."""

from __future__ import annotations

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
