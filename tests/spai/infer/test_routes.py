"""--precision auto by evidence: the fastest route that passed its parity gate for this model on this CPU, gated
and probed once and kept, never a failed route, with the reasons printed; AMX, VNNI and AVX2 orderings through the
CPU-flags override."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest

from spai.errors import ConfigError
from spai.infer.cpu import FLAGS_VARIABLE, cpu_flags, cpu_identity
from spai.infer.evidence import RouteEvidence, evidence_for, model_fingerprint
from spai.infer.routes import choose_route
from spai.model.specs import EVIDENCE_FILE

AMX = frozenset({"avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8"})
VNNI = frozenset({"avx2", "avx512f", "avx512_vnni"})
AVX2 = frozenset({"avx2"})


@pytest.fixture(scope="module", autouse=True)
def small_gates():
    """The selection logic is under test here, not the gate's reach: a smaller gate (defaults: spai.infer.evidence)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("spai.infer.evidence.GATE_PATCHES", 16)
        mp.setattr("spai.infer.evidence.GATE_MAX_PIXELS", 200_000)
        yield


@pytest.fixture(scope="module")
def graphs(tiny_onnx_dir, tmp_path_factory):
    """The seeded spai-tiny's fp32 and int8 graphs in an export folder of their own."""
    from export.quantize import patch_encoder_int8

    folder = tmp_path_factory.mktemp("auto_export")
    for name in ("patch_encoder.onnx", "aggregator.onnx"):
        shutil.copy(tiny_onnx_dir / name, folder / name)
    patch_encoder_int8(folder / "patch_encoder.onnx")
    return folder


def test_the_flags_override_names_the_cpu(monkeypatch):
    monkeypatch.setenv(FLAGS_VARIABLE, "avx2, avx512_vnni")
    assert cpu_flags() == {"avx2", "avx512_vnni"} and cpu_identity(cpu_flags()).endswith("[avx512_vnni avx2]")


def test_auto_gates_and_probes_once_then_takes_the_fastest_passed_route(tiny_model, graphs, caplog):
    with caplog.at_level("INFO", logger="spai.infer"):
        choice = choose_route(tiny_model, onnx_dir=graphs, flags=AMX)
    evidence = json.loads((graphs / EVIDENCE_FILE).read_text())
    assert evidence["weights_sha256"] == model_fingerprint(tiny_model)
    cpu = evidence["cpus"][cpu_identity(AMX)]
    assert set(cpu["verdicts"]) == {"torch-bf16", "ort-int8", "ort-fp32"}  # torch-fp32 is the reference
    assert all(v["passed"] for v in cpu["verdicts"].values())  # random weights pass every gate
    speeds = {name: s["patches_per_s"] for name, s in cpu["speeds"].items()}
    assert choice.name == max(speeds, key=speeds.get) and choice.reason.startswith(f"route: {choice.name}")
    assert "gating" in caplog.text and "measuring the speed" in caplog.text  # logged (spai.infer.evidence, .routes)
    caplog.clear()
    with caplog.at_level("INFO", logger="spai.infer"):
        assert choose_route(tiny_model, onnx_dir=graphs, flags=AMX) == choice
    assert caplog.records == []  # kept: neither gated nor probed again


def test_a_failed_route_is_never_taken_however_fast(tiny_model, graphs):
    evidence = evidence_for(tiny_model, graphs)
    cpu = evidence.cpu(cpu_identity(AMX))
    cpu["verdicts"]["torch-bf16"] = {"passed": False, "failures": ["torch-bf16/images: max |Δp| 0.039 > 0.01"]}
    cpu["speeds"]["torch-bf16"] = {"patches_per_s": 1e9}
    cpu["speeds"]["ort-int8"] = {"patches_per_s": 1e8}  # second fastest: it is taken
    evidence.save()
    choice = choose_route(tiny_model, onnx_dir=graphs, flags=AMX)
    assert choice.name == "ort-int8"
    assert "passed over torch-bf16, 1e+09 patches/s: failed its gate (torch-bf16/images: max |Δp| 0.039" in \
        choice.reason


@pytest.mark.parametrize(("flags", "routes"), [
    (VNNI, {"ort-int8", "ort-fp32", "torch-fp32"}),  # no bf16 hardware: bf16 is not even gated
    (AVX2, {"ort-fp32", "ort-int8", "torch-fp32"})])  # int8 without VNNI is tried too: its accuracy is this CPU's
def test_each_cpu_gets_its_own_candidates_and_verdicts(tiny_model, graphs, flags, routes):
    choice = choose_route(tiny_model, onnx_dir=graphs, flags=flags)
    cpu = RouteEvidence.load(graphs / EVIDENCE_FILE, model_fingerprint(tiny_model)).cpus[cpu_identity(flags)]
    assert set(cpu["speeds"]) == routes and choice.name in routes and "torch-bf16" not in cpu["verdicts"]


def test_without_graphs_auto_stays_on_torch_and_says_why(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("SPAI_CACHE_DIR", str(tmp_path))
    choice = choose_route(tiny_model, flags=VNNI)
    assert choice.backend == "torch" and "passed over ort-int8: no exported graph" in choice.reason
    assert list((tmp_path / "routes").glob("*.json"))  # the evidence is kept in the cache


def test_evidence_of_another_model_is_not_used(tiny_model, graphs, tmp_path):
    path = tmp_path / EVIDENCE_FILE
    shutil.copy(graphs / EVIDENCE_FILE, path)
    assert RouteEvidence.load(path, model_fingerprint(tiny_model)).cpus
    assert RouteEvidence.load(path, "0" * 64).cpus == {}


def test_auto_with_no_passing_route_of_a_backend_is_a_clear_error(tiny_model, graphs):
    evidence = evidence_for(tiny_model, graphs)
    for name in ("ort-int8", "ort-fp32"):
        evidence.cpu(cpu_identity(VNNI))["verdicts"][name] = {"passed": False, "failures": [f"{name}: injected"]}
    evidence.save()
    with pytest.raises(ConfigError, match="no ort route passed"):
        choose_route(tiny_model, onnx_dir=graphs, flags=VNNI, backend="ort")


def test_the_python_api_takes_auto_too(tiny_model, graphs, monkeypatch, capsys):
    monkeypatch.setenv(FLAGS_VARIABLE, ",".join(sorted(AVX2)))
    images = [np.zeros((300, 300, 3), np.uint8)]
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("spai.infer")
    logger.addHandler(handler)
    level, logger.level = logger.level, logging.INFO
    try:
        got = tiny_model.score(images, precision="auto", onnx_dir=str(graphs))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert 0 <= float(got[0]) <= 1 and any("route: " in r.getMessage() for r in records)  # logged with its reasons
    assert capsys.readouterr().out == ""  # the library never prints


def test_bf16_verdicts_hold_only_for_the_layers_the_route_kept_in_fp32(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("SPAI_CACHE_DIR", str(tmp_path))
    identity = cpu_identity(AMX)
    evidence = evidence_for(tiny_model)
    assert evidence.bf16_fp32_layers == ["mfvit.vit.clip.visual.conv1.weight"]  # the route's rule, recorded
    cpu = evidence.cpu(identity)
    cpu["verdicts"]["torch-bf16"] = {"passed": False, "failures": ["torch-bf16/images: max |Δp| 0.048 > 0.01"]}
    cpu["speeds"]["torch-bf16"] = cpu["speeds"]["ort-int8"] = {"patches_per_s": 1.0}
    path = evidence.save()
    assert evidence_for(tiny_model).verdict(identity, "torch-bf16") is not None  # same kept layers: it holds
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "bf16_fp32_layers": None}))  # measured before the route kept any
    stale = evidence_for(tiny_model)
    assert stale.verdict(identity, "torch-bf16") is None and stale.speed(identity, "torch-bf16") is None
    assert stale.speed(identity, "ort-int8") == 1.0  # the other routes' evidence stays


# --- a GPU's torch fp16 / bf16 (autocast) routes: gated like the others, here on CPU autocast (issue 33) ----------

@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_autocast_routes_are_gated_once_and_kept(tiny_model, precision, monkeypatch):
    from spai.infer import routes

    gated: list[list[str]] = []
    real_gate = routes.gate_routes

    def counting(model, entered):
        gated.append([r.name for r in entered])
        return real_gate(model, entered)

    monkeypatch.setattr(routes, "gate_routes", counting)
    choice = routes.require_passed(tiny_model, precision, autocast=True)
    name = f"torch-{precision}-autocast"
    assert gated == [[name]]
    assert choice.precision == precision and choice.reason.startswith(f"route: {name} on ")
    verdict = evidence_for(tiny_model).verdict(cpu_identity(cpu_flags()), name)
    assert verdict["passed"] and verdict["images"]["n"] > 0 and verdict["random_patches"]["n"] > 0
    assert routes.require_passed(tiny_model, precision, autocast=True) == choice
    assert gated == [[name]]  # kept: not gated again


def test_an_autocast_route_that_fails_its_gate_is_refused_with_the_verdict(tiny_model, monkeypatch):
    from spai.infer import parity, routes

    strict = parity.Gates(bf16_max_dprob=1e-12)
    monkeypatch.setattr(parity, "Gates", lambda: strict)
    evidence = evidence_for(tiny_model)
    evidence.cpu(cpu_identity(cpu_flags()))["verdicts"].pop("torch-bf16-autocast", None)
    evidence.save()
    with pytest.raises(ConfigError, match=r"torch-bf16-autocast failed its parity gate .* max \|Δp\|"):
        routes.require_passed(tiny_model, "bf16", autocast=True)
    with pytest.raises(ConfigError, match="failed its parity gate"):  # the failed verdict is kept, and refused
        routes.require_passed(tiny_model, "bf16", autocast=True)


def test_autocast_route_runners_and_gpu_route_names(tiny_model):
    from spai.infer.routes import require_passed, resolve_gpu_route, runners_for

    route = runners_for("torch", "fp16", model=tiny_model, autocast=True)
    assert route.name == "torch-fp16-autocast" and route.encoder.autocast and not route.aggregator.autocast
    assert require_passed(tiny_model, "fp32").name == "torch-fp32"
    assert resolve_gpu_route(None, "fp16") == ("torch", "fp16")
    with pytest.raises(ConfigError, match="CPU precision"):
        resolve_gpu_route(None, "int8")
    with pytest.raises(ConfigError, match="--backend ort is a CPU route"):
        resolve_gpu_route("ort", "fp32")
