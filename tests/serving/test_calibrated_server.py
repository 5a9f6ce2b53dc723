"""A calibrated checkpoint through the whole chain: checkpoint -> spai.create_model -> ONNX export (raw logits +
calibration.json) -> python-ort repository (calibration in the `spai` model's parameters) -> the bundled
tritonserver. Served probabilities equal the in-process ones of the same ONNX graphs (<= 1e-5), decisions are
identical, the logits equal PyTorch's, a request may pick its operating point, and `spai score` writes the decisions
and counts the flagged images. (The fitted temperature is small for random weights, so calibrated probabilities
magnify the ~1e-6 logit gap between PyTorch and ONNX Runtime: the 1e-5 check is against the runner that serves.)"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.triton


@pytest.fixture(scope="module")
def calibrated(tiny_model, check_images, tmp_path_factory):
    """(calibrated model, repository): the seeded spai-tiny model calibrated by spai.train.calibration on labels that
    follow its own (noisy) ranking, so that its decisions split the images."""
    import spai
    from export.onnx import onnx_from_torch
    from serving.repository import build_repository
    from spai.model.checkpoint import save_checkpoint
    from spai.train.calibration import calibration_from_scores

    tmp = tmp_path_factory.mktemp("calibrated")
    logits = np.array([s.logit for s in tiny_model.score_images(check_images)])
    rng = np.random.default_rng(0)
    noisy = logits + rng.normal(0, 0.5 * logits.std(), len(logits))  # thresholds fall between the images
    labels = (noisy > np.median(noisy)).astype(int)
    entry = calibration_from_scores(noisy, labels, method="platt", fprs=[0.25])
    save_checkpoint(tiny_model, tmp / "calibrated.pth", calibration=entry)
    model = spai.create_model(checkpoint=tmp / "calibrated.pth")
    export = onnx_from_torch(model, tmp / "export")
    assert (export.directory / "calibration.json").is_file()
    return model, build_repository(export.directory, "python-ort", tmp / "repo" / "models"), export.directory


@pytest.fixture(scope="module")
def inprocess_ort(calibrated, check_images):
    """Image name -> ImageScore of the exported graphs scored in-process (spai.infer.scorer with ONNX Runtime)."""
    from spai.infer.runners import OrtRunner
    from spai.infer.scorer import Scorer
    from spai.model.calibration import calibration_from_export

    model, _, export = calibrated
    with OrtRunner(export / "patch_encoder.onnx") as enc, OrtRunner(export / "aggregator.onnx") as agg:
        scores = Scorer(enc, agg, spec=model.patch_spec,
                        calibration=calibration_from_export(export)).score_images(check_images)
    return {str(p): s for p, s in zip(check_images, scores)}


@pytest.fixture(scope="module")
def server(calibrated):
    from serving.server import TritonServer

    with TritonServer(calibrated[1]) as srv:
        yield srv


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_served_probabilities_and_decisions_equal_in_process(server, calibrated, inprocess_ort, check_images,
                                                              protocol):
    from serving.client import SpaiClient
    from spai.model.calibration import sigmoid

    model = calibrated[0]
    ref = {s.image: s for s in model.score_images(check_images)}
    url = server.http_url if protocol == "http" else server.grpc_url
    rows = SpaiClient(url, protocol).score_paths(check_images, concurrency=4, progress=False)
    assert all(not r.error for r in rows), [r.error for r in rows if r.error]
    same_graphs = [inprocess_ort[r.image] for r in rows]
    np.testing.assert_allclose([r.probability for r in rows], [w.probability for w in same_graphs], atol=1e-5,
                               rtol=0)
    assert [r.decision for r in rows] == [w.decision for w in same_graphs]
    want = [ref[r.image] for r in rows]
    np.testing.assert_allclose([r.logit for r in rows], [w.logit for w in want], atol=1e-5, rtol=0)
    assert [r.decision for r in rows] == [w.decision for w in want]
    assert {r.operating_point for r in rows} == {model.calibration.default}
    assert len({r.decision for r in rows}) == 2  # the check can fail: both decisions occur
    threshold = model.calibration.operating_point().threshold
    assert min(abs(w.probability - threshold) for w in want) > 1e-4  # and no image sits on the threshold
    raw = sigmoid(np.array([r.logit for r in rows]))
    assert np.abs(raw - np.array([r.probability for r in rows])).max() > 1e-2  # the calibration is applied


def test_a_request_picks_its_operating_point(server, calibrated, check_images):
    from serving.client import SpaiClient
    from spai.errors import ServingError

    model, client = calibrated[0], SpaiClient(server.http_url, retries=2)
    ref = {s.image: s for s in model.score_images(check_images, operating_point="balanced")}
    rows = client.score_paths(check_images, concurrency=4, progress=False, operating_point="balanced")
    assert [r.decision for r in rows] == [ref[r.image].decision for r in rows]
    assert {r.operating_point for r in rows} == {"balanced"}
    with pytest.raises(ServingError, match="unknown operating point 'fpr0.001'.*fpr0.25"):
        client.infer(Path(check_images[0]).read_bytes(), operating_point="fpr0.001")
    assert server.is_ready()


def test_spai_score_writes_decisions_and_counts_the_flagged(server, calibrated, check_images, tmp_path, capsys):
    from spai_cli import main

    out = tmp_path / "scores.csv"
    assert main(["score", *map(str, check_images), "--url", server.http_url, "-o", str(out), "--no-progress"]) == 0
    rows = list(csv.DictReader(open(out)))
    flagged = sum(r["decision"] == "1" for r in rows)
    assert {r["operating_point"] for r in rows} == {calibrated[0].calibration.default}
    assert f"flagged {flagged} of {len(rows)} scored images as AI-generated" in capsys.readouterr().out
