"""Bad inputs through the Python API, ``spai predict`` and the raw graphs: a clear error or a documented handling,
never a crash; one bad file never fails the good ones in a CLI run. (The CLI's user mistakes and their exit codes:
tests/spai_cli/test_cli_exit_codes.py.)"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from rel_corpus import Case, cases, good_jpeg, write_cases

import spai
from spai.errors import ImageError

CASES = cases()
SECTION = "inputs"


def _scored_ok(res) -> bool:
    return 0.0 <= res.probability <= 1.0 and math.isfinite(res.logit) and res.num_patches >= 1


@pytest.mark.parametrize("case", CASES, ids=[c.filename for c in CASES])
def test_python_api(case: Case, tiny_model, tmp_path, record):
    path = write_cases(tmp_path, [case])[case.name]
    if case.expect == "error":
        with pytest.raises(ImageError, match=case.match) as info:
            tiny_model.score_images([path], **case.limits)
        assert path.name in str(info.value)  # the message names the file
        record(SECTION, case.name, api="ImageError", message=str(info.value).replace(str(tmp_path) + os.sep, ""),
               handling=case.handling or "refused with ImageError")
    else:
        t = spai.decode_image(path, **case.limits)
        assert t.dtype == np.uint8 and t.shape[2] == 3
        if case.shape:
            assert tuple(t.shape) == case.shape
        (res,) = tiny_model.score_images([path], **case.limits)
        assert _scored_ok(res)
        record(SECTION, case.name, api=f"scored p={res.probability:.4f} ({res.num_patches} patches)",
               handling=case.handling or "scored")


def test_missing_file_directory_and_bytes(tiny_model, tmp_path, record):
    with pytest.raises(ImageError, match="cannot read"):
        tiny_model.score_images([tmp_path / "missing.jpg"])
    (tmp_path / "folder.jpg").mkdir()
    with pytest.raises(ImageError, match="directory"):
        tiny_model.score_images([tmp_path / "folder.jpg"])
    with pytest.raises(ImageError, match="empty"):
        tiny_model.score_images([b""])
    record(SECTION, "missing file", api="ImageError 'cannot read file'", handling="refused, names the file")
    record(SECTION, "a directory named like an image", api="ImageError 'is a directory'", handling="refused")


def test_non_utf8_path(tiny_model, tmp_path, record):
    raw = os.fsencode(tmp_path) + b"/caf\xe9-\xff.jpg"  # Latin-1 bytes: not valid UTF-8
    with open(raw, "wb") as f:
        f.write(good_jpeg(100, 120))
    path = os.fsdecode(raw)  # surrogate-escaped str, as os.listdir returns it
    (res,) = tiny_model.score_images([path])
    assert _scored_ok(res)
    (res2,) = tiny_model.score_images([raw.decode("latin-1").encode("latin-1") and Path(path)])
    assert res2.probability == res.probability
    record(SECTION, "non-UTF-8 file name", api="scored", handling="scored; printed with replacement characters")


TENSOR_CASES = [
    ("NaN float array", lambda: np.full((32, 32, 3), np.nan, dtype=np.float32), "NaN"),
    ("Inf float tensor", lambda: torch.full((3, 32, 32), float("inf")), "NaN or infinite"),
    ("float array outside [0, 1]", lambda: np.random.rand(32, 32, 3).astype(np.float32) * 255, r"\[0, 1\]"),
    ("4-D tensor", lambda: torch.zeros(1, 3, 32, 32), "shape"),
    ("2-channel array", lambda: np.zeros((2, 32, 32), dtype=np.uint8), "colour channels|shape"),
    ("zero-height tensor", lambda: torch.zeros(3, 0, 32, dtype=torch.uint8), "no pixels"),
    ("zero-width array", lambda: np.zeros((32, 0, 3), dtype=np.uint8), "no pixels"),
]


@pytest.mark.parametrize("name,make,match", TENSOR_CASES, ids=[c[0] for c in TENSOR_CASES])
def test_bad_arrays_through_the_api(name, make, match, tiny_model, record):
    with pytest.raises(ImageError, match=match) as info:
        tiny_model.score_images([make()])
    record(SECTION, name, api="ImageError", message=str(info.value), handling="refused before the model runs")


def test_api_batch_with_a_bad_image_raises_naming_it(tiny_model, tmp_path, record):
    good = tmp_path / "good.jpg"
    good.write_bytes(good_jpeg())
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"")
    with pytest.raises(ImageError, match="bad.jpg"):
        tiny_model.score_images([good, bad, good])
    record(SECTION, "bad image inside an API batch", api="ImageError naming it",
           handling="score_images validates every input first and raises for the call; the CLIs score file by "
                    "file so one bad file never fails the others")


# --- raw graphs --------------------------------------------------------------------------------------------------
def test_raw_torch_model_bad_tensors(tiny_model, record):
    with pytest.raises(RuntimeError):
        tiny_model.encode_patches(torch.rand(2, 3, 100, 100))
    out = tiny_model.encode_patches(torch.full((1, 3, 224, 224), float("nan")))
    assert torch.isnan(out).any()  # raw graph: no validation, NaN propagates (documented)
    record(SECTION, "raw torch encode_patches: wrong shape", api="RuntimeError (shape mismatch)",
           handling="raw model API, not user input: torch's shape error")
    record(SECTION, "raw torch encode_patches: NaN patches", api="NaN features",
           handling="raw graph propagates NaN; load_image / the serving decoder refuse NaN before it")


@pytest.fixture(scope="module")
def ort_sessions(tiny_model, tmp_path_factory):
    ort = pytest.importorskip("onnxruntime")
    onnx_export = pytest.importorskip("export.onnx")
    out = tmp_path_factory.mktemp("onnx")
    exp = onnx_export.onnx_from_torch(tiny_model, out)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    enc = ort.InferenceSession(str(out / "patch_encoder.onnx"), opts, providers=["CPUExecutionProvider"])
    agg = ort.InferenceSession(str(out / "aggregator.onnx"), opts, providers=["CPUExecutionProvider"])
    return enc, agg, exp.feature_dim if hasattr(exp, "feature_dim") else tiny_model.feature_dim


ORT_BAD = [
    ("ORT encoder: wrong spatial size", "enc", lambda d: {"patches": np.zeros((1, 3, 100, 100), np.uint8)}),
    ("ORT encoder: 3-D input", "enc", lambda d: {"patches": np.zeros((3, 224, 224), np.uint8)}),
    ("ORT encoder: float32 input (it takes uint8)", "enc",
     lambda d: {"patches": np.zeros((1, 3, 224, 224), np.float32)}),
    ("ORT encoder: float64 input", "enc", lambda d: {"patches": np.zeros((1, 3, 224, 224), np.float64)}),
    ("ORT encoder: missing input", "enc", lambda d: {}),
    ("ORT aggregator: wrong feature dim", "agg",
     lambda d: {"patch_features": np.zeros((1, 4, d + 1), np.float32), "patch_mask": np.ones((1, 4), bool)}),
    ("ORT aggregator: mask/feature length mismatch", "agg",
     lambda d: {"patch_features": np.zeros((1, 4, d), np.float32), "patch_mask": np.ones((1, 5), bool)}),
]


@pytest.mark.parametrize("name,which,feeds", ORT_BAD, ids=[c[0] for c in ORT_BAD])
def test_onnx_runtime_rejects_wrong_tensors(name, which, feeds, ort_sessions, record):
    enc, agg, dim = ort_sessions
    sess = enc if which == "enc" else agg
    with pytest.raises(Exception) as info:
        sess.run(None, feeds(dim))
    assert "onnxruntime" in type(info.value).__module__ or isinstance(info.value, (ValueError, RuntimeError))
    record(SECTION, name, api=f"{type(info.value).__name__}", message=str(info.value).splitlines()[0][:160],
           handling="rejected by ONNX Runtime's input validation (no crash, session still usable)")
    # the session still works afterwards
    ok = enc.run(None, {"patches": np.random.default_rng(0).integers(0, 256, (2, 3, 224, 224), dtype=np.uint8)})[0]
    assert ok.shape == (2, dim) and np.isfinite(ok).all()


def test_onnx_encoder_takes_uint8_so_no_nan_reaches_it(ort_sessions, record):
    enc, agg, dim = ort_sessions
    assert enc.get_inputs()[0].type == "tensor(uint8)"  # NaN / Inf cannot even be expressed at the graph boundary
    out = enc.run(None, {"patches": np.array([np.zeros((3, 224, 224)), np.full((3, 224, 224), 255)], np.uint8)})[0]
    assert np.isfinite(out).all()  # the extremes of the input range stay finite
    feats = np.nan_to_num(out)[None].repeat(1, axis=0)
    feats[0, 1] = np.nan  # a NaN feature row of a masked-out (padded) patch
    logits = agg.run(None, {"patch_features": feats, "patch_mask": np.array([[True, False]])})[0]
    record(SECTION, "NaN / Inf patches to the ONNX encoder", api="impossible: the encoder takes uint8 pixels",
           handling="float images are checked for NaN/Inf and [0, 1] before they are cut (load_image)")
    record(SECTION, "NaN in a masked-out patch's features (ONNX aggregator)",
           api="finite logit" if np.isfinite(logits).all() else "NaN logit",
           handling="padded rows are zeros in every pipeline; a NaN row is only reachable through the raw graph")


# --- CLI: spai predict ---------------------------------------------------------------------------------------
def _cli_cases() -> list[Case]:
    return [c for c in CASES if not c.limits and not c.name.startswith("EXIF orientation ")] + \
        [c for c in CASES if c.name == "EXIF orientation 6"]


def test_predict_cli_scores_good_files_beside_bad_ones(spai_cli, tmp_path, record):
    """A mixed folder: one row per file, exit 0 (in-process; its user mistakes: tests/spai_cli/test_cli_exit_codes.py)."""
    d = tmp_path / "mixed"
    selected = _cli_cases()
    paths = write_cases(d, selected)
    for i in range(3):
        (d / f"good{i}.jpg").write_bytes(good_jpeg(seed=i))
    raw = os.fsencode(d) + b"/latin-\xe9.jpg"
    with open(raw, "wb") as f:
        f.write(good_jpeg(90, 90))
    out_csv = tmp_path / "rows.csv"
    proc = spai_cli("predict", d, "--model", "spai-tiny", "-o", out_csv)
    text = proc.stdout + proc.stderr
    assert "Traceback" not in text, text[-4000:]
    assert proc.returncode == 0, text[-4000:]
    with open(out_csv, newline="", encoding="utf-8", errors="replace") as f:
        rows = {Path(r["image"]).name: r for r in csv.DictReader(f)}
    for case in selected:
        row = rows[paths[case.name].name]
        if case.expect == "error":
            assert row["error"] and row["probability"] == "", (case.name, row)
        else:
            assert not row["error"] and 0 <= float(row["probability"]) <= 1, (case.name, row)
    for i in range(3):
        assert 0 <= float(rows[f"good{i}.jpg"]["probability"]) <= 1
    latin = [r for n, r in rows.items() if n.startswith("latin-")]
    assert len(latin) == 1 and not latin[0]["error"]
    n_err = sum(1 for r in rows.values() if r["error"])
    record("cli", "spai predict, mixed folder", exit_code=proc.returncode,
           result=f"{len(rows)} rows: {len(rows) - n_err} scored, {n_err} error rows; exit 0",
           handling="one row per file, errors in the 'error' column; non-UTF-8 name scored")
