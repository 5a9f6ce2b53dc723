"""The review page without a browser: reading every scores format, refusing what is not one, and what the page
holds (links relative to it, thumbnails bounded, missing and undecodable files marked, nothing from a network)."""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from spai.corpus.writers import open_score_writer
from spai.errors import DataError
from spai.review.page import Threshold
from spai.review.report import (
    html_report_from_scores,
    review_order,
    review_rows_from_scores,
    threshold_from_rows,
)
from spai_cli import main

_spec = importlib.util.spec_from_file_location("spai_report_support", Path(__file__).with_name("report_support.py"))
support = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
_spec.loader.exec_module(support)  # type: ignore[union-attr]


def _page_data(path: Path) -> dict:
    text = path.read_text(encoding="utf-8")
    block = re.search(r'<script type="application/json" id="data">(.*?)</script>', text, re.S)
    assert block, "no data block"
    return json.loads(block.group(1))


@pytest.fixture()
def small_run(tmp_path, monkeypatch):
    """12 images in photos/, one undecodable file, one scored file deleted since, one error row; cwd = the run."""
    monkeypatch.chdir(tmp_path)
    names = [os.path.relpath(p, tmp_path) for p in support.write_images(tmp_path / "photos", 12)]
    Path("photos/batch_000/broken.jpg").write_bytes(b"not a jpeg")
    names += ["photos/batch_000/broken.jpg", "photos/batch_000/deleted.jpg", "photos/batch_001/failed.jpg"]
    rows = support.scores_records(names, errors=1)
    rows[names.index("photos/batch_000/deleted.jpg")].update(probability="0.99", decision=1)
    return support.write_scores_csv(rows, tmp_path / "scores.csv"), rows


def test_reads_csv_with_extra_columns_and_refuses_what_is_not_a_scores_file(small_run, tmp_path):
    scores, records = small_run
    rows = review_rows_from_scores(scores)
    assert [r.image for r in rows] == [r["image"] for r in records]
    assert rows[-1].error and rows[-1].probability is None and rows[0].num_patches == 1
    labels = tmp_path / "labels.csv"
    labels.write_text("image,class,split\na.jpg,1,val\n")
    empty = tmp_path / "empty.csv"
    empty.write_text(",".join(support.FIELDS) + "\n")
    bad = tmp_path / "bad.csv"
    bad.write_text("image,probability\na.jpg,high\n")
    for path, says in [(tmp_path / "nope.csv", "no such scores file"), (labels, "not a scores file"),
                       (empty, "no rows"), (bad, "'high'")]:
        with pytest.raises(DataError, match=says):
            review_rows_from_scores(path)


def test_a_resumed_run_s_last_row_per_image_wins(small_run, tmp_path):
    scores, records = small_run
    retried = {**records[-1], "probability": "0.75", "decision": 1, "operating_point": "fpr0.05", "error": ""}
    resumed = support.write_scores_csv([*records, retried], tmp_path / "resumed.csv")  # the failed one, again
    rows = review_rows_from_scores(resumed)
    assert len(rows) == len(records) and rows[-1].image == retried["image"]
    assert rows[-1].probability == 0.75 and rows[-1].decision and not rows[-1].error


def test_reads_parquet_like_csv(small_run, tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    scores, records = small_run
    typed = [{**r, "probability": float(r["probability"]) if r["probability"] else None,
              "decision": bool(r["decision"]) if r["decision"] != "" else None,
              "num_patches": r["num_patches"] or None, "source_mtime": 1.5} for r in records]
    table = pa.Table.from_pylist(typed)
    pq.write_table(table, tmp_path / "scores.parquet")
    assert review_rows_from_scores(tmp_path / "scores.parquet") == review_rows_from_scores(scores)
    with open_score_writer(tmp_path / "parts.parquet", resume=False, rows_per_group=4) as writer:
        for row in review_rows_from_scores(scores):  # a folder of parts, as `spai predict -o x.parquet` writes
            writer.write(row)
    assert review_rows_from_scores(tmp_path / "parts.parquet") == review_rows_from_scores(scores)
    (tmp_path / "labels.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match="cannot read as Parquet"):
        review_rows_from_scores(tmp_path / "labels.parquet")


def test_order_and_threshold(small_run):
    rows = review_rows_from_scores(small_run[0])
    order = [rows[i] for i in review_order(rows)]
    flagged = [r for r in order if r.decision]
    assert order[:len(flagged)] == flagged and order[-1].error
    probabilities = [r.probability or 0.0 for r in flagged]
    assert probabilities == sorted(probabilities, reverse=True)
    bound = threshold_from_rows(rows)  # fpr0.05: only the decisions bound it
    assert bound is not None and bound.low < bound.high
    assert max(r.probability or 0.0 for r in rows if r.decision is False) == bound.low
    assert threshold_from_rows(rows, 0.7) == Threshold(0.7, 0.7, "given")
    spelled = threshold_from_rows([dataclasses.replace(r, operating_point="p0.5") for r in rows])
    assert spelled is not None and spelled.text().startswith("0.5 ")


def test_the_page_links_relative_to_itself_bounds_thumbnails_and_marks_missing_files(small_run, tmp_path):
    scores, _ = small_run
    out = tmp_path / "review" / "report.html"
    summary = html_report_from_scores(scores, out, thumbnails=5)
    data = _page_data(out)
    rows = {r[0]: r for r in data["rows"]}
    assert summary.missing == 2 and summary.errors == 1 and summary.thumbnails == 5  # deleted.jpg, failed.jpg
    assert rows["photos/batch_000/deleted.jpg"][6] == -1 and rows["photos/batch_001/failed.jpg"][6] == -1
    assert sum(r[8] >= 0 for r in data["rows"]) == 5 and len(data["thumbs"]) == 5
    assert all(t.startswith("data:image/jpeg;base64,") and len(t) < 8000 for t in data["thumbs"])
    assert data["rows"][0][0] == "photos/batch_000/deleted.jpg"  # the most probable, gone: no thumbnail
    first = data["rows"][1]  # the most probable file that is there: the first thumbnail; links go up from review/
    assert first[8] == 0 and data["dirs"][first[6]].startswith("../photos/")
    assert (out.parent / data["dirs"][first[6]] / first[0].rsplit("/", 1)[1]).is_file()
    html_report_from_scores(scores, out, thumbnails=100)
    assert _page_data(out)["rows"][[r[0] for r in _page_data(out)["rows"]].index(
        "photos/batch_000/broken.jpg")][8] == -2  # there, but undecodable: a placeholder, not a broken image
    text = out.read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", text) and "http://" not in text


def test_names_that_could_break_the_page_or_its_links(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    odd = ["a </script><b>x.jpg", "é ü#%?.png", os.fsdecode(b"raw\xff.jpg")]  # the first: a folder "a <"
    Path("a <").mkdir()
    for name in odd:
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(name, format="PNG")
    (tmp_path / "heat").mkdir()
    for name in odd:
        (tmp_path / "heat" / f"{Path(name).stem}.heatmap.png").write_bytes(b"png")
    with open("scores.csv", "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "probability", "decision"])
        writer.writerows([name, "0.5", "1"] for name in odd)
    summary = html_report_from_scores("scores.csv", "report.html", heatmaps="heat")
    assert summary.heatmaps == 3 and summary.heatmaps_embedded == 0  # not real PNGs: linked, the page says so
    text = Path("report.html").read_text(encoding="utf-8")
    assert "</script><b>" not in text
    data = _page_data(Path("report.html"))
    assert {r[0] for r in data["rows"]} == set(odd) and all(r[6] >= 0 and r[9] != 0 and r[12] == -1
                                                     for r in data["rows"])
    links = {r[0]: r[7] for r in data["rows"]}
    assert links["é ü#%?.png"] == "%C3%A9%20%C3%BC%23%25%3F.png" and links[odd[2]] == "raw%FF.jpg"


def test_spai_report_command_and_its_user_errors(small_run, tmp_path, capsys):
    scores, _ = small_run
    assert main(["report", str(scores), "-o", str(tmp_path / "r.html"), "--no-progress"]) == 0
    assert "15 images" in capsys.readouterr().out and (tmp_path / "r.html").stat().st_size > 10_000
    assert main(["report", str(tmp_path / "missing.csv"), "-o", str(tmp_path / "x.html")]) == 1
    assert main(["report", str(scores), "--heatmaps", str(tmp_path / "nowhere"), "-o", "x.html"]) == 1
    assert main(["report", str(scores), "-o", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "no such scores file" in err and "--heatmaps" in err and "is a directory" in err
    assert "Traceback" not in err
