"""Every command's user mistakes, in-process through ``spai_cli.main(argv)``: the documented exit code (README,
"Exit codes"), an ``error:`` message that says how to fix it, never a traceback, nothing half-written.

In-process because the exit code comes from :func:`spai_cli.console.report_errors`, the same in a process or not; the
entry point itself (``python -m spai_cli``) is proved once per command in test_smoke.py.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
from helpers import assert_clean_failure, good_jpeg, write_bad_checkpoints
from rel_corpus import cases, write_cases

import spai


def _message(run, *folders: Path) -> str:
    """The error line as the report shows it: the test's temporary folders cut from paths."""
    line = run.last_error_line
    for folder in folders:
        line = line.replace(str(folder) + os.sep, "")
    return line


# --- usage (argparse): exit 2 ----------------------------------------------------------------------------------
@pytest.mark.parametrize("argv,match", [
    ((), "required: COMMAND"),
    (("nope",), "invalid choice"),
    (("demo", "--epochs", "x"), "invalid int"),
    (("predict",), "required"),
])
def test_bad_usage_exits_2(argv, match, spai_cli):
    run = spai_cli(*argv)
    assert_clean_failure(run, 2, match)


# --- spai predict ------------------------------------------------------------------------------------------------
def test_predict_user_mistakes(spai_cli, tmp_path, record):
    empty = tmp_path / "no-images"
    empty.mkdir()
    (empty / "readme.txt").write_text("not an image")
    run = spai_cli("predict", empty, "--model", "spai-tiny")
    assert_clean_failure(run, 1, "no images found")
    record("cli", "spai predict: folder with no images", exit_code=1, result=run.last_error_line)

    run = spai_cli("predict", tmp_path / "nope.jpg", "--model", "spai-tiny")
    assert_clean_failure(run, 1, "no such file")
    record("cli", "spai predict: missing path", exit_code=1, result=run.last_error_line)

    bad = tmp_path / "all-bad"
    write_cases(bad, [c for c in cases() if c.expect == "error" and not c.limits][:4])
    run = spai_cli("predict", bad, "--model", "spai-tiny")
    assert_clean_failure(run, 1, "no image could be scored")
    record("cli", "spai predict: every file bad", exit_code=1, result=run.last_error_line)


@pytest.fixture(scope="module")
def bad_checkpoints(tiny_model, tmp_path_factory) -> dict[str, tuple[Path, str]]:
    return write_bad_checkpoints(tiny_model, tmp_path_factory.mktemp("ckpts"))


def test_predict_refuses_every_bad_checkpoint(bad_checkpoints, spai_cli, tmp_path, record):
    img = tmp_path / "img.jpg"
    img.write_bytes(good_jpeg(64, 64))
    for case, (path, match) in bad_checkpoints.items():
        run = spai_cli("predict", img, "--checkpoint", path)
        assert_clean_failure(run, 1, match)
        assert not (path.parent / "PWNED").exists(), "the malicious pickle ran"
        record("checkpoints", case, cli="spai predict --checkpoint", exit_code=run.returncode,
               message=_message(run, path.parent)[:220])


@pytest.mark.parametrize("case", ["truncated checkpoint", "NaN weights", "pickle that would execute code",
                                  "missing checkpoint"])
def test_export_refuses_bad_checkpoints_leaving_nothing(case, bad_checkpoints, spai_cli, tmp_path, record):
    path, match = bad_checkpoints[case]
    out = tmp_path / "out"
    run = spai_cli("export", path, "-o", out, "--onnx-only")
    assert_clean_failure(run, 1, match)
    assert not (path.parent / "PWNED").exists()
    assert not out.exists() or not list(out.rglob("*")), "a refused export left files behind"
    record("checkpoints", f"{case} (spai export)", cli="spai export", exit_code=run.returncode,
           message=_message(run, path.parent)[:220])


# --- spai export -------------------------------------------------------------------------------------------------
def test_export_user_mistakes(spai_cli, tmp_path):
    run = spai_cli("export", "spai-huge", "-o", tmp_path / "o")
    assert_clean_failure(run, 1, "neither a checkpoint file nor a model name.*spai-tiny")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    run = spai_cli("export", "spai-tiny", "-o", blocker / "sub")
    assert_clean_failure(run, 1, "not writable")


# --- spai test / spai score ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ckpt(tiny_model, tmp_path_factory) -> Path:
    return spai.save_checkpoint(tiny_model, tmp_path_factory.mktemp("ck") / "tiny.pth", epoch=0)


@pytest.fixture()
def dataset(tmp_path) -> Path:
    for i in range(3):
        (tmp_path / f"g{i}.jpg").write_bytes(good_jpeg(150, 200, seed=i))
    (tmp_path / "corrupt.jpg").write_bytes(b"not a jpeg at all")
    rows = [("g0.jpg", 0), ("g1.jpg", 1), ("g2.jpg", 0), ("missing.jpg", 1), ("corrupt.jpg", 0)]
    path = tmp_path / "t.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "class", "split"])
        w.writerows([(a, b, "test") for a, b in rows])
    return path


def _spai_test(spai_cli, ckpt: Path, csv_path: Path, out: Path, *extra: str):
    return spai_cli("test", "--model", ckpt, "--csv", csv_path, "--output", out, "--workers", "0", "--no-progress",
                    *extra)


def test_spai_test_skips_missing_and_corrupt_rows(dataset, ckpt, spai_cli, tmp_path, record):
    run = _spai_test(spai_cli, ckpt, dataset, tmp_path / "out")
    text = run.stdout + run.stderr
    assert run.returncode == 0 and "Traceback" not in text, text[-3000:]
    assert "2 skipped" in text and "corrupt.jpg" in text, text[-3000:]
    record("cli", "spai test: CSV with a missing path and a corrupt file", exit_code=0,
           result="both rows skipped with a warning naming them; metrics on the 3 good rows ('n=3 ... (2 skipped)')")


def test_spai_test_strict_refuses_missing_paths(dataset, ckpt, spai_cli, tmp_path, record):
    run = _spai_test(spai_cli, ckpt, dataset, tmp_path / "out", "--strict")
    assert_clean_failure(run, 1, "missing.*drop --strict")
    record("cli", "spai test --strict: CSV with a missing path", exit_code=1, result=_message(run, dataset.parent))


@pytest.mark.parametrize("content,match,name", [
    ("foo,bar\n1,2\n", "lacks column", "CSV without image/class columns"),
    ("", "empty|no rows|lacks|header", "empty CSV"),
    ("image,class,split\n", "no rows|no images|empty|split", "CSV with a header only"),
])
def test_spai_test_malformed_csv(content, match, name, ckpt, spai_cli, tmp_path, record):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    run = _spai_test(spai_cli, ckpt, path, tmp_path / "out")
    assert_clean_failure(run, 1, match)
    record("cli", f"spai test: {name}", exit_code=1, result=_message(run, tmp_path))


def test_spai_score_without_a_server(spai_cli, tmp_path, record):
    img = tmp_path / "a.jpg"
    img.write_bytes(good_jpeg())
    run = spai_cli("score", img, "--url", "127.0.0.1:9", "-o", tmp_path / "s.csv", "--no-progress")
    assert_clean_failure(run, 1, "no image could be scored.*server")
    record("cli", "spai score: no server listening (127.0.0.1:9)", exit_code=1, result=run.last_error_line)
    empty = tmp_path / "empty"
    empty.mkdir()
    run = spai_cli("score", empty, "--url", "127.0.0.1:9", "-o", tmp_path / "s2.csv", "--no-progress")
    assert_clean_failure(run, 1, "no images found")
    record("cli", "spai score: folder with no images", exit_code=1, result=_message(run, tmp_path))


# --- the other commands: one mistake each ------------------------------------------------------------------------
def test_train_calibrate_convert_data_mistakes(spai_cli, tmp_path):
    header_only = tmp_path / "h.csv"
    header_only.write_text("image,class,split\n")
    out = tmp_path / "run"
    assert_clean_failure(spai_cli("train", "--cfg", "spai-tiny", "--data", tmp_path / "nope.csv", "--output", out),
                         1, "cannot read csv")
    assert_clean_failure(spai_cli("train", "--cfg", "spai-tiny", "--data", header_only, "--output", out,
                                  "--opt", "TRAIN.NOPE", "1"), 1, "unknown config key 'TRAIN.NOPE'.*did you mean")
    assert_clean_failure(spai_cli("train", "--cfg", "spai-nope", "--data", header_only, "--output", out),
                         1, "unknown model config.*did you mean 'spai-tiny'")
    assert_clean_failure(spai_cli("calibrate", "--model", tmp_path / "nope.pth", "--csv", header_only,
                                  "-o", tmp_path / "c.pth"), 1, "no such checkpoint")
    assert_clean_failure(spai_cli("convert", tmp_path / "nope.pth", tmp_path / "o.pth"), 1, "does not exist")
    assert not (tmp_path / "o.pth").exists()
    assert_clean_failure(spai_cli("data", "proxy", "--output", tmp_path / "px", "--n", "2"), 1, "at least")


def test_repository_serve_report_mistakes(spai_cli, tmp_path):
    assert_clean_failure(spai_cli("repository", "--variant", "python-ort"), 1, "--artifacts and -o/--output")
    assert_clean_failure(spai_cli("repository", "--artifacts", tmp_path / "nope", "-o", tmp_path / "r"),
                         1, "missing export outputs.*spai export")
    assert not (tmp_path / "r").exists()
    assert_clean_failure(spai_cli("serve", "--repository", tmp_path / "nope"), 1, "config.pbtxt")
    assert_clean_failure(spai_cli("report", tmp_path / "nope.csv", "-o", tmp_path / "r.html"),
                         1, "no such scores file")
    assert not (tmp_path / "r.html").exists()
