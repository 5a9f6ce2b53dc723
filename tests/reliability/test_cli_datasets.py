"""``spai test`` with broken CSVs and ``spai score`` without a server: clear messages, documented exit codes,
bad rows skipped (or refused with --strict), never a traceback."""

from __future__ import annotations

import csv

import pytest
from conftest import assert_clean_failure
from rel_corpus import good_jpeg

import spai


@pytest.fixture(scope="module")
def ckpt(tiny_model, tmp_path_factory):
    return spai.save_checkpoint(tiny_model, tmp_path_factory.mktemp("ck") / "tiny.pth", epoch=0)


@pytest.fixture()
def dataset(tmp_path):
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


def test_spai_test_skips_missing_and_corrupt_rows(dataset, ckpt, run_spai, tmp_path, record):
    proc = run_spai("test", "--model", ckpt, "--csv", dataset, "--output", tmp_path / "out", "--workers", "0",
                    "--no-progress")
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Traceback" not in text, text[-3000:]
    assert "2 skipped" in text and "corrupt.jpg" in text, text[-3000:]
    record("cli", "spai test: CSV with a missing path and a corrupt file", exit_code=0,
           result="both rows skipped with a warning naming them; metrics on the 3 good rows ('n=3 ... (2 skipped)')")


def test_spai_test_strict_refuses_missing_paths(dataset, ckpt, run_spai, tmp_path, record):
    proc = run_spai("test", "--model", ckpt, "--csv", dataset, "--output", tmp_path / "out", "--workers", "0",
                    "--no-progress", "--strict")
    assert_clean_failure(proc, 1, "missing.*drop --strict")
    record("cli", "spai test --strict: CSV with a missing path", exit_code=1,
           result=proc.stderr.strip().splitlines()[-1].replace(str(dataset.parent) + "/", ""))


@pytest.mark.parametrize("content,match,name", [
    ("foo,bar\n1,2\n", "lacks column", "CSV without image/class columns"),
    ("", "empty|no rows|lacks|header", "empty CSV"),
    ("image,class,split\n", "no rows|no images|empty|split", "CSV with a header only"),
])
def test_spai_test_malformed_csv(content, match, name, ckpt, run_spai, tmp_path, record):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    proc = run_spai("test", "--model", ckpt, "--csv", path, "--output", tmp_path / "out", "--workers", "0",
                    "--no-progress")
    assert_clean_failure(proc, 1, match)
    record("cli", f"spai test: {name}", exit_code=1,
           result=proc.stderr.strip().splitlines()[-1].replace(str(tmp_path) + "/", ""))


def test_spai_score_without_a_server(run_spai, tmp_path, record):
    img = tmp_path / "a.jpg"
    img.write_bytes(good_jpeg())
    proc = run_spai("score", img, "--url", "127.0.0.1:9", "-o", tmp_path / "s.csv", "--no-progress")
    assert_clean_failure(proc, 1, "no image could be scored.*server")
    record("cli", "spai score: no server listening (127.0.0.1:9)", exit_code=1,
           result=proc.stderr.strip().splitlines()[-1])
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = run_spai("score", empty, "--url", "127.0.0.1:9", "-o", tmp_path / "s.csv", "--no-progress")
    assert_clean_failure(proc, 1, "no images found")
    record("cli", "spai score: folder with no images", exit_code=1,
           result=proc.stderr.strip().splitlines()[-1].replace(str(tmp_path) + "/", ""))
