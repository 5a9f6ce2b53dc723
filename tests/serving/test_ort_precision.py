"""CPU serving at the route's speed: ``spai repository --variant python-ort --precision int8|fp32|auto`` serves the
encoder graph of the route that passed its parity gate for this export on this CPU (the export folder's route
evidence, tied to the graph files by their hashes); int8 that failed, was never gated or was replaced since is
refused with how to fix it; served probabilities equal in-process scoring of the same route (<= 1e-5) on the bundled
tritonserver."""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from serving.repository import ENCODER, build_repository
from spai.errors import ServingError
from spai.files import sha256_file
from spai.infer.cpu import FLAGS_VARIABLE, cpu_flags, cpu_identity
from spai.infer.evidence import evidence_for
from spai.infer.routes import choose_route
from spai.model.specs import ENCODER_FILES, EVIDENCE_FILE

VNNI = "avx2,avx512f,avx512_vnni"  # int8 leads the first guess; the verdicts are this "CPU"'s


@pytest.fixture(scope="module", autouse=True)
def vnni_cpu():
    """One CPU identity for the module; a smaller gate (its reach is tested in tests/spai/infer/test_parity.py)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(FLAGS_VARIABLE, VNNI)
        mp.setattr("spai.infer.evidence.GATE_PATCHES", 16)
        mp.setattr("spai.infer.evidence.GATE_MAX_PIXELS", 200_000)
        yield


@pytest.fixture(scope="module")
def gated(tiny_model, tiny_onnx_dir, tmp_path_factory) -> Path:
    """The seeded spai-tiny's fp32 and int8 graphs, both gated on this CPU (random weights pass)."""
    from export.quantize import patch_encoder_int8

    folder = tmp_path_factory.mktemp("gated_export")
    for name in ("patch_encoder.onnx", "aggregator.onnx"):
        shutil.copy(tiny_onnx_dir / name, folder / name)
    patch_encoder_int8(folder / "patch_encoder.onnx")
    choose_route(tiny_model, onnx_dir=folder, backend="ort")
    assert evidence_for(tiny_model, folder).passed(cpu_identity(cpu_flags()), "ort-int8")
    return folder


def copy_of(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / "export"))


def encoder_params(repo: Path) -> dict[str, str]:
    """The encoder config's parameters (a Triton model config parsed as Triton parses it)."""
    text_format = pytest.importorskip("google.protobuf.text_format")
    model_config_pb2: Any = pytest.importorskip("tritonclient.grpc.model_config_pb2")

    config = text_format.Parse((repo / ENCODER / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    return {k: v.string_value for k, v in config.parameters.items()}


@contextlib.contextmanager
def told() -> Iterator[list[str]]:
    """The lines serving.repository logs while the block runs (the route served and why)."""
    said: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: said.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("serving.repository")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield said
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_int8_serves_the_gated_int8_graph_one_patch_a_call(gated, tmp_path):
    with told() as said:
        repo = build_repository(gated, "python-ort", tmp_path / "repo", precision="int8")
    assert sha256_file(repo / ENCODER / "1" / "model.onnx") == sha256_file(gated / ENCODER_FILES["int8"])
    assert encoder_params(repo)["precision"] == "int8" and encoder_params(repo)["max_ort_batch"] == "1"
    assert said == [f"route: ort-int8 (asked for; it passed its parity gate on {cpu_identity(cpu_flags())})"]
    fp32 = build_repository(gated, "python-ort", tmp_path / "fp32")  # the default: the fp32 graph, as before
    assert sha256_file(fp32 / ENCODER / "1" / "model.onnx") == sha256_file(gated / ENCODER_FILES["fp32"])
    assert encoder_params(fp32)["precision"] == "fp32" and int(encoder_params(fp32)["max_ort_batch"]) > 1


def test_auto_serves_the_faster_passed_graph_and_says_why(gated, tmp_path):
    with told() as said:
        repo = build_repository(gated, "python-ort", tmp_path / "repo", precision="auto")
    speeds = json.loads((gated / EVIDENCE_FILE).read_text())["cpus"][cpu_identity(cpu_flags())]["speeds"]
    fastest = max(("ort-fp32", "ort-int8"), key=lambda r: speeds[r]["patches_per_s"])
    assert encoder_params(repo)["precision"] == fastest.removeprefix("ort-")
    assert said[-1].startswith(f"route: {fastest} (the fastest route that passed")


def test_a_failed_int8_is_refused_and_auto_serves_fp32(gated, tmp_path):
    folder = copy_of(gated, tmp_path)
    evidence = json.loads((folder / EVIDENCE_FILE).read_text())
    verdict = evidence["cpus"][cpu_identity(cpu_flags())]["verdicts"]["ort-int8"]
    verdict.update(passed=False, failures=["ort-int8/random_patches: max |Δp| 0.0131 > 0.01"])
    (folder / EVIDENCE_FILE).write_text(json.dumps(evidence))
    with pytest.raises(ServingError, match=r"failed its parity gate .*0\.0131 > 0\.01.*serve --precision fp32"):
        build_repository(folder, "python-ort", tmp_path / "a", precision="int8")
    with told() as said:
        repo = build_repository(folder, "python-ort", tmp_path / "b", precision="auto")
    assert encoder_params(repo)["precision"] == "fp32" and "ort-int8 is not served: ort-int8 failed" in said[-1]


def test_int8_without_a_verdict_for_these_graphs_is_refused(gated, tmp_path):
    folder = copy_of(gated, tmp_path)
    shutil.copy(folder / ENCODER_FILES["fp32"], folder / ENCODER_FILES["int8"])  # not the graph that was gated
    with pytest.raises(ServingError, match="no int8 verdict for these graphs.*--precision int8"):
        build_repository(folder, "python-ort", tmp_path / "a", precision="int8")
    (folder / EVIDENCE_FILE).unlink()
    with told() as said:
        repo = build_repository(folder, "python-ort", tmp_path / "b", precision="auto")
    assert encoder_params(repo)["precision"] == "fp32" and "no int8 verdict" in said[-1]
    (folder / ENCODER_FILES["int8"]).unlink()
    with pytest.raises(ServingError, match=f"has no {ENCODER_FILES['int8']}.*spai export CKPT"):
        build_repository(folder, "python-ort", tmp_path / "c", precision="int8")


def test_each_variant_takes_its_own_precisions(gated, tmp_path, capsys):
    from spai_cli import main

    for variant, precision, message in (("python-ort", "bf16", "--precision fp32 | int8 | auto, not bf16"),
                                        ("trt", "int8", "no --precision"),
                                        ("onnx", "int8", "--precision fp32, not int8"),
                                        ("python-torch", "int8", "--precision fp32 | fp16 | bf16, not int8")):
        capsys.readouterr()
        assert main(["repository", "--artifacts", str(gated), "--variant", variant, "--precision", precision,
                     "-o", str(tmp_path / variant)]) != 0
        assert message in capsys.readouterr().err
    assert main(["repository", "--artifacts", str(gated), "--variant", "python-ort", "--precision", "int8",
                 "-o", str(tmp_path / "ok")]) == 0
    assert "route: ort-int8" in capsys.readouterr().err


@pytest.fixture(scope="module", params=["int8", "fp32"])
def served(request, gated, tmp_path_factory):
    """(precision, running server) of a python-ort repository of ``gated`` serving that precision."""
    from serving.server import TritonServer

    repo = build_repository(gated, "python-ort", tmp_path_factory.mktemp(f"repo_{request.param}"),
                            precision=request.param)
    with TritonServer(repo) as server:
        yield request.param, server


@pytest.mark.triton
def test_served_probabilities_equal_the_in_process_route(served, gated, tiny_model, check_images):
    from serving.client import SpaiClient
    from spai.infer.routes import runners_for
    from spai.infer.scorer import Scorer
    from spai.model.calibration import calibration_from_export

    def in_process(precision: str) -> list:
        with runners_for("ort", precision, onnx_dir=gated) as route:
            return Scorer.for_route(route, spec=tiny_model.patch_spec,
                                    calibration=calibration_from_export(gated)).score_images(check_images)

    precision, server = served
    want = in_process(precision)
    if precision == "int8":  # the check tells the graphs apart: int8 moves probabilities by more than 1e-5
        other = in_process("fp32")
        assert max(abs(a.probability - b.probability) for a, b in zip(want, other)) > 1e-5
    rows = SpaiClient(server.http_url, "http").score_paths(check_images, concurrency=4, progress=False)
    assert all(not r.error for r in rows), [r.error for r in rows if r.error]
    by_image = {str(p): w for p, w in zip(check_images, want)}
    served_p = np.array([r.probability for r in rows], dtype=float)
    np.testing.assert_allclose(served_p, np.array([by_image[r.image].probability for r in rows], dtype=float),
                               atol=1e-5, rtol=0)
