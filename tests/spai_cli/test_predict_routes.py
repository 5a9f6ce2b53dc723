"""``spai predict --backend --precision``: every route by name, a clear error for a route that does not exist,
and the scores CSV keeps each image's scoring time."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from spai_cli import main


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def exported_tiny(tiny_model, tmp_path_factory) -> Path:
    import spai
    from export.onnx import onnx_from_torch
    from export.quantize import patch_encoder_int8

    out = tmp_path_factory.mktemp("predict-onnx")
    ckpt = out / "tiny.pth"
    spai.save_checkpoint(tiny_model, ckpt)
    patch_encoder_int8(onnx_from_torch(tiny_model, out).patch_encoder)
    return out


def test_predict_ort_int8_writes_scores_with_latency(exported_tiny, generated_images, tmp_path, capsys) -> None:
    images = [str(p) for p in generated_images[:3]]
    ref, got = tmp_path / "fp32.csv", tmp_path / "int8.csv"
    assert main(["predict", *images, "--checkpoint", str(exported_tiny / "tiny.pth"), "-o", str(ref)]) == 0
    assert main(["predict", *images, "--checkpoint", str(exported_tiny / "tiny.pth"), "--backend", "ort",
                 "--precision", "int8", "--onnx", str(exported_tiny), "-o", str(got)]) == 0
    assert "route: ort-int8" in capsys.readouterr().err
    a, b = _rows(ref), _rows(got)
    assert [r["image"] for r in a] == [r["image"] for r in b] == images
    assert all(float(r["latency_ms"]) > 0 for r in b)
    assert max(abs(float(x["probability"]) - float(y["probability"])) for x, y in zip(a, b, strict=True)) <= 1e-2


def test_predict_ort_without_onnx_exports_the_model_first(generated_images, tmp_path, capsys) -> None:
    out = tmp_path / "scores.csv"
    assert main(["predict", str(generated_images[0]), "--model", "spai-tiny", "--backend", "ort", "-o",
                 str(out)]) == 0
    assert "exporting the model to ONNX" in capsys.readouterr().err and len(_rows(out)) == 1


@pytest.mark.parametrize(("args", "message"), [(["--backend", "ort", "--precision", "bf16"], "no bf16 GEMMs"),
                                               (["--backend", "torch", "--precision", "int8"], "ONNX Runtime")])
def test_predict_refuses_a_route_that_does_not_exist(args, message, generated_images, capsys) -> None:
    assert main(["predict", str(generated_images[0]), "--model", "spai-tiny", *args]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_predict_auto_takes_a_gated_route_and_says_why(exported_tiny, generated_images, tmp_path, capsys,
                                                       monkeypatch) -> None:
    monkeypatch.setenv("SPAI_CPU_FLAGS", "avx2 avx512f avx512_vnni")  # a VNNI CPU without bf16
    monkeypatch.setattr("spai.infer.evidence.GATE_PATCHES", 16)
    monkeypatch.setattr("spai.infer.evidence.GATE_MAX_PIXELS", 200_000)
    args = ["predict", str(generated_images[0]), "--checkpoint", str(exported_tiny / "tiny.pth"), "--onnx",
            str(exported_tiny), "--precision", "auto", "-o", str(tmp_path / "auto.csv")]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "gating ort-int8, ort-fp32" in err and "(the fastest route that passed its parity gate" in err
    assert (exported_tiny / "route_evidence.json").is_file() and len(_rows(tmp_path / "auto.csv")) == 1
    assert main([*args[:-1], str(tmp_path / "again.csv")]) == 0
    assert "gating" not in capsys.readouterr().err  # the verdicts were kept


def test_auto_with_recorded_evidence_does_not_load_the_model_for_an_ort_route(tiny_model, generated_images, tmp_path,
                                                                               capsys, monkeypatch) -> None:
    """Issue 34: opening a job loads only what its route runs. The first `auto` run of a checkpoint file gates,
    probes and records; the next one picks the same ORT route from that evidence without loading torch weights."""
    import spai

    monkeypatch.setenv("SPAI_CPU_FLAGS", "avx2 avx512f avx512_vnni")
    monkeypatch.setattr("spai.infer.evidence.GATE_PATCHES", 16)
    monkeypatch.setattr("spai.infer.evidence.GATE_MAX_PIXELS", 200_000)
    ckpt = spai.save_checkpoint(tiny_model, tmp_path / "tiny.pth")
    args = ["predict", str(generated_images[0]), "--checkpoint", str(ckpt), "--backend", "ort", "--precision", "auto"]
    assert main([*args, "-o", str(tmp_path / "first.csv")]) == 0
    first = capsys.readouterr().err
    assert "gating" in first and "the model is not loaded" not in first

    def no_model(*_args, **_kwargs):
        raise AssertionError("the torch model was loaded")

    monkeypatch.setattr("spai_cli.routes.load_model", no_model)
    monkeypatch.setattr("spai.infer.job.load_model", no_model)
    assert main([*args, "-o", str(tmp_path / "again.csv")]) == 0
    again = capsys.readouterr().err
    assert "the model is not loaded" in again and "route: ort-" in again and "gating" not in again
    a, b = _rows(tmp_path / "first.csv"), _rows(tmp_path / "again.csv")
    assert [r["probability"] for r in a] == [r["probability"] for r in b]
