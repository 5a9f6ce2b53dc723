"""Calibration end to end through the commands: `spai calibrate` writes a weights-only copy with the calibration
entry (or nothing, with the reason), `spai predict` decides with it, `spai test` measures it, an upstream
checkpoint calibrates the same way, and `spai train` calibrates best.pth on its validation split."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import spai
from spai.model.checkpoint import save_checkpoint
from spai.model.config import get_config
from spai.train.trainer import TrainOptions, train
from spai_cli import main as cli_main


def write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "class", "split"])
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def labelled(tiny_model, tmp_path_factory) -> tuple[Path, Path, list[Path]]:
    """(checkpoint of the seeded spai-tiny model, a CSV of 24 proxy images labelled by its own noisy ranking,
    the images): labels the random model can rank, so calibration has something to fit."""
    from spai.data.proxy import make_proxy_dataset

    tmp = tmp_path_factory.mktemp("labelled")
    images = sorted((make_proxy_dataset(tmp / "px", n=12, seed=2).parent / "images").glob("*.png"))
    logits = np.array([s.logit for s in tiny_model.score_images(images)])
    noisy = logits + np.random.default_rng(0).normal(0, 0.5 * logits.std(), len(logits))
    labels = (noisy > np.median(noisy)).astype(int)
    csv_path = write_csv(tmp / "labelled.csv", [{"image": str(p), "class": int(c), "split": "val"}
                                                for p, c in zip(images, labels)])
    return save_checkpoint(tiny_model, tmp / "model.pth"), csv_path, images


def calibrate(ckpt: Path, csv_path: Path, out: Path, *extra: str) -> int:
    return cli_main(["calibrate", "--model", str(ckpt), "--csv", str(csv_path), "-o", str(out), "--workers", "0",
                     "--no-progress", *extra])


@pytest.fixture(scope="module")
def calibrated(labelled, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cal") / "calibrated.pth"
    assert calibrate(labelled[0], labelled[1], out, "--fpr", "0.1", "0.01") == 0
    return out


def test_calibrate_writes_a_weights_only_copy_with_the_entry(labelled, calibrated):
    ckpt, csv_path, _ = labelled
    data = torch.load(calibrated, map_location="cpu", weights_only=True)
    source = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert all(torch.equal(data["model"][k], source["model"][k]) for k in source["model"])
    entry = data["calibration"]
    assert entry["method"] == "platt" and entry["default"] == "fpr0.1" and entry["temperature"] > 0
    assert entry["csv_sha256"] == hashlib.sha256(csv_path.read_bytes()).hexdigest()
    assert (entry["n_positive"], entry["n_negative"]) == (12, 12)
    assert [p["name"] for p in entry["operating_points"]] == ["fpr0.1", "balanced"]
    point = entry["operating_points"][0]
    assert {"target_fpr", "threshold", "fpr", "tpr", "tpr_ci", "n"} <= set(point) and point["fpr"] <= 0.1
    assert entry["refused"][0]["name"] == "fpr0.01" and "100 real images" in entry["refused"][0]["reason"]
    assert {"nll", "brier", "ece"} <= set(entry["before"]) and entry["after"]["nll"] < entry["before"]["nll"]
    model = spai.create_model(checkpoint=calibrated)
    assert model.calibration.default == "fpr0.1" and model.calibration.temperature == entry["temperature"]


def test_data_that_cannot_calibrate_writes_nothing(labelled, tmp_path, capsys):
    ckpt, csv_path, images = labelled
    one_class = write_csv(tmp_path / "fakes.csv", [{"image": str(p), "class": 1, "split": "val"} for p in images])
    assert calibrate(ckpt, one_class, tmp_path / "a.pth") == 1
    assert "only class 1" in capsys.readouterr().err and not (tmp_path / "a.pth").exists()
    assert calibrate(ckpt, csv_path, tmp_path / "b.pth", "--fpr", "0.01") == 1
    assert "needs at least 100 real images" in capsys.readouterr().err and not (tmp_path / "b.pth").exists()
    assert calibrate(ckpt, csv_path, tmp_path, "--fpr", "0.1") == 1  # a directory, not a file
    assert "is a directory" in capsys.readouterr().err


def test_predict_decides_at_the_calibrated_operating_point(labelled, calibrated, tmp_path, capsys):
    images = [str(p) for p in labelled[2][:6]]
    assert cli_main(["predict", *images, "--checkpoint", str(calibrated), "-o", str(tmp_path / "p.csv")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "p.csv")))
    model = spai.create_model(checkpoint=calibrated)
    want = model.score_images(images)
    assert [r["decision"] for r in rows] == [str(int(w.decision)) for w in want]
    assert {r["operating_point"] for r in rows} == {"fpr0.1"}
    # logits first: fp32 sums in another thread order move them by ~1e-6, which this steep calibration (fitted on a
    # small set) turns into up to ~1e-5 of probability; the CSV rounds to 6 decimals on top
    np.testing.assert_allclose([float(r["logit"]) for r in rows], [w.logit for w in want], atol=1e-5)
    np.testing.assert_allclose([float(r["probability"]) for r in rows], [w.probability for w in want], atol=5e-5)
    out = capsys.readouterr().out
    assert f"flagged {sum(w.decision for w in want)} of 6 scored images as AI-generated (operating point fpr0.1)" in out
    assert cli_main(["predict", images[0], "--checkpoint", str(calibrated), "--operating-point", "nope"]) == 1
    assert "unknown operating point 'nope'; this model has fpr0.1, balanced" in capsys.readouterr().err


def test_predict_on_onnx_runtime_applies_the_same_calibration(labelled, calibrated, tmp_path, capsys):
    """The ORT route (exported graphs: raw logits + calibration.json) decides like the torch route."""
    images = [str(p) for p in labelled[2][:4]]
    assert cli_main(["predict", images[0], "--checkpoint", str(calibrated), "--backend", "ort",
                     "--operating-point", "nope"]) == 1  # refused before the model is exported
    assert "unknown operating point 'nope'" in capsys.readouterr().err
    assert cli_main(["predict", *images, "--checkpoint", str(calibrated), "--backend", "ort",
                     "-o", str(tmp_path / "ort.csv")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "ort.csv")))
    model = spai.create_model(checkpoint=calibrated)
    want = {w.image: w for w in model.score_images(images)}
    logits = np.array([float(r["logit"]) for r in rows])
    np.testing.assert_allclose(logits, [want[r["image"]].logit for r in rows], atol=1e-4)
    # the CSV rounds logits to 6 decimals, which the fitted 1/T magnifies: the calibration applied, within that
    np.testing.assert_allclose([float(r["probability"]) for r in rows], model.calibration.probability(logits),
                               atol=1e-4)
    point = model.calibration.operating_point()
    assert {r["operating_point"] for r in rows} == {point.name}
    assert [r["decision"] for r in rows] == [str(int(float(r["probability"]) >= point.threshold)) for r in rows]


def test_spai_test_measures_the_operating_points_and_the_calibration(labelled, calibrated, tmp_path, capsys):
    assert cli_main(["test", "--model", str(calibrated), "--csv", str(labelled[1]), "--split", "val", "--output",
                     str(tmp_path), "--workers", "0", "--no-progress"]) == 0
    m = json.loads((tmp_path / "labelled_metrics.json").read_text())
    assert m["calibrated"] and [p["name"] for p in m["operating_points"]] == ["fpr0.1", "balanced"]
    assert {"ece", "brier", "nll", "acc", "auc"} <= set(m) and m["operating_points"][0]["fpr"] <= 0.1
    assert m["tpr_at_fpr"]["0.01"]["tpr"] is None  # 12 real images cannot measure a 1% FPR
    assert (tmp_path / "labelled_roc.png").stat().st_size > 1000
    assert (tmp_path / "labelled_reliability.png").stat().st_size > 1000
    scores = list(csv.DictReader(open(tmp_path / "labelled_scores.csv")))
    assert {"probability", "logit", "decision", "operating_point"} <= set(scores[0])
    out = capsys.readouterr().out
    assert "fpr0.1 (default)" in out and "TPR at 5% FPR: n/a" in out and "ECE" in out


def test_test_and_calibrate_score_through_another_route(labelled, calibrated, tmp_path):
    """`spai test` / `spai calibrate --backend ort` score through the exported graphs: the same logits as the
    model (ORT vs PyTorch), hence the same ranking and the same fitted operating points."""
    common = ["--csv", str(labelled[1]), "--split", "val", "--workers", "0", "--no-progress"]
    for route, extra in (("torch", []), ("ort", ["--backend", "ort"])):
        assert cli_main(["test", "--model", str(calibrated), *common, "--output", str(tmp_path / route), *extra]) == 0
    logits = {route: [float(r["logit"]) for r in csv.DictReader(open(tmp_path / route / "labelled_scores.csv"))]
              for route in ("torch", "ort")}
    np.testing.assert_allclose(logits["ort"], logits["torch"], atol=1e-4)
    metrics = {r: json.loads((tmp_path / r / "labelled_metrics.json").read_text()) for r in ("torch", "ort")}
    assert metrics["ort"]["auc"] == metrics["torch"]["auc"]
    assert calibrate(labelled[0], labelled[1], tmp_path / "ort.pth", "--fpr", "0.1", "--backend", "ort") == 0
    entry = torch.load(tmp_path / "ort.pth", map_location="cpu", weights_only=True)["calibration"]
    ref = torch.load(calibrated, map_location="cpu", weights_only=True)["calibration"]
    assert [p["name"] for p in entry["operating_points"]] == [p["name"] for p in ref["operating_points"]]
    assert entry["operating_points"][0]["tpr"] == ref["operating_points"][0]["tpr"]


def test_an_upstream_checkpoint_calibrates_the_same_way(tmp_path):
    from PIL import Image

    from tests.spai.model.importers.test_upstream import tiny_checkpoint

    ckpt, _ = tiny_checkpoint(tmp_path)
    upstream = spai.create_model(checkpoint=ckpt)
    rng = np.random.default_rng(1)
    images = [tmp_path / f"{i}.png" for i in range(16)]
    for i, path in enumerate(images):
        Image.fromarray(rng.integers(0, 256, (230 + 7 * i, 240, 3), dtype=np.uint8)).save(path)
    logits = np.array([s.logit for s in upstream.score_images(images)])
    labels = (logits > np.median(logits)).astype(int)
    csv_path = write_csv(tmp_path / "l.csv", [{"image": str(p), "class": int(c), "split": "val"}
                                              for p, c in zip(images, labels)])
    assert calibrate(ckpt, csv_path, tmp_path / "cal.pth", "--fpr", "0.125", "--method", "temperature") == 0
    data = torch.load(tmp_path / "cal.pth", map_location="cpu", weights_only=True)
    assert data["format"] == "spai-deploy/1" and data["calibration"]["method"] == "temperature"
    assert data["source_format"] == "upstream-spai" and data["imported_from"] == str(ckpt)
    model = spai.create_model(checkpoint=tmp_path / "cal.pth")
    got = model.score_images(images[:3])
    assert [g.logit for g in got] == pytest.approx(list(logits[:3]), abs=1e-5)  # the same weights
    assert [g.probability for g in got] == pytest.approx(
        list(model.calibration.probability(np.array([g.logit for g in got]))), abs=0)


def test_train_calibrates_best_pth_on_its_validation_split(proxy_csv, tmp_path):
    rows = list(csv.DictReader(open(proxy_csv)))
    val = write_csv(tmp_path / "val.csv", [dict(r, image=str(proxy_csv.parent / r["image"]), split="val")
                                           for r in rows])  # all 20 proxy images: 10 real
    # 3 epochs: after one the seeded model still ranks this set backwards (AUC 0.37), which calibration refuses
    cfg = get_config("spai-tiny", [("DATA.BATCH_SIZE", 4), ("DATA.AUGMENTED_VIEWS", 1), ("TRAIN.EPOCHS", 3),
                                   ("DATA.NUM_WORKERS", 0)])
    train(TrainOptions(cfg=cfg, data_csv=proxy_csv, output=tmp_path / "run", val_csv=val, progress=False,
                       tensorboard=False, calibration="temperature", calibration_fprs=(0.01, 0.1)))
    data = torch.load(tmp_path / "run" / "best.pth", map_location="cpu", weights_only=True)
    entry = data["calibration"]
    assert entry["split"] == "val" and entry["csv"] == str(val) and entry["default"] == "fpr0.1"
    assert entry["refused"][0]["name"] == "fpr0.01" and (entry["n_negative"], entry["n_positive"]) == (10, 10)
    epoch = torch.load(tmp_path / "run" / f"ckpt_epoch_{data['epoch']}.pth", map_location="cpu", weights_only=True)
    assert "calibration" not in epoch and all(torch.equal(epoch["model"][k], data["model"][k]) for k in epoch["model"])
