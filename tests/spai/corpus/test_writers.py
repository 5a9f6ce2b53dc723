"""Score files: one schema in CSV and Parquet, written row by row, refused when present, repaired and resumed."""

from __future__ import annotations

import csv

import pytest

from spai.corpus.writers import ParquetScoreWriter, done_inputs, open_score_writer, read_score_rows
from spai.errors import DataError, SPAIError
from spai.infer.scores import CSV_FIELDS, FlaggedCount, ImageScore


def _scores(n: int, start: int = 0) -> list[ImageScore]:
    return [ImageScore(f"img{i}.png", 0.1 + i / 1000, -2.0 + i / 100, 5, 1.5, decision=i % 2 == 0,
                       operating_point="p0.5", size_bytes=100 + i, mtime=1.7e9 + i / 7) for i in range(start, n)]


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_round_trip_same_columns_last_row_wins(tmp_path, suffix):
    path = tmp_path / f"s{suffix}"
    with open_score_writer(path, resume=False) as w:
        for s in _scores(5):
            w.write(s)
        w.write(ImageScore("bad.png", latency_ms=2.0, error="bad image"))
        w.write(ImageScore("img1.png", 0.9, 2.0, 5, 1.0, decision=True, operating_point="p0.5", size_bytes=7))
    rows = read_score_rows(path)
    assert [r["image"] for r in rows] == ["img0.png", "img2.png", "img3.png", "img4.png", "bad.png", "img1.png"]
    assert all(list(r) == list(CSV_FIELDS) for r in rows)
    assert rows[0]["mtime"] == 1.7e9 and rows[3]["mtime"] == 1.7e9 + 4 / 7  # exact: the resume key compares it
    assert rows[-1]["size_bytes"] == 7 and rows[-1]["decision"] is True and rows[0]["num_patches"] == 5
    assert rows[-2]["probability"] is None and rows[-2]["error"] == "bad image" and rows[-2]["num_patches"] is None
    done = done_inputs(path)
    assert "bad.png" not in done and done["img1.png"] == (7, None) and done["img4.png"] == (104, 1.7e9 + 4 / 7)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_existing_output_is_refused_without_resume(tmp_path, suffix):
    path = tmp_path / f"s{suffix}"
    with open_score_writer(path, resume=False) as w:
        w.write(_scores(1)[0])
    with pytest.raises(SPAIError, match="--resume"):
        open_score_writer(path, resume=False)
    with open_score_writer(path, resume=True) as w:
        w.write(_scores(2, 1)[0])
    assert [r["image"] for r in read_score_rows(path)] == ["img0.png", "img1.png"]


def test_torn_csv_row_is_cut_on_resume(tmp_path):
    path = tmp_path / "s.csv"
    with open_score_writer(path, resume=False) as w:
        for s in _scores(3):
            w.write(s)
    whole = path.read_bytes()
    path.write_bytes(whole + b'img3.png,0.5,"torn')  # killed inside a quoted field
    assert [r["image"] for r in read_score_rows(path)] == ["img0.png", "img1.png", "img2.png"]
    with open_score_writer(path, resume=True) as w:
        w.write(_scores(4, 3)[0])
    rows = list(csv.DictReader(open(path, newline="")))
    assert [r["image"] for r in rows] == ["img0.png", "img1.png", "img2.png", "img3.png"]
    assert path.read_bytes().startswith(whole)


def test_csv_with_newlines_in_a_field_reads_back(tmp_path):
    path = tmp_path / "s.csv"
    with open_score_writer(path, resume=False) as w:
        w.write(ImageScore('we"ird\nname.png', error="line one\nline two"))
        w.write(_scores(1)[0])
    with open_score_writer(path, resume=True):
        pass  # nothing torn: nothing cut
    assert [r["image"] for r in read_score_rows(path)] == ['we"ird\nname.png', "img0.png"]


def test_parquet_is_a_folder_of_whole_parts(tmp_path):
    """A killed run leaves its complete parts (a torn one is dropped); resuming adds parts after them; pyarrow and
    pandas read the folder, and the last row per image is the one that counts."""
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "s.parquet"
    w = ParquetScoreWriter(path, rows_per_group=2)
    for s in _scores(5):
        w.write(s)  # two parts written, one row pending: as if SIGKILLed now (no close)
    assert sorted(p.name for p in path.iterdir()) == ["part-000001.parquet", "part-000002.parquet"]
    (path / "part-000099.parquet").write_bytes(b"PAR1 torn")
    (path / ".part-000100.parquet.x.partial").write_bytes(b"PAR1")
    assert sorted(done_inputs(path)) == ["img0.png", "img1.png", "img2.png", "img3.png"]
    with pytest.raises(SPAIError, match="--resume"):
        open_score_writer(path, resume=False)
    with open_score_writer(path, resume=True) as w2:
        assert sorted(p.name for p in path.iterdir()) == ["part-000001.parquet", "part-000002.parquet"]
        for s in _scores(6, 3):
            w2.write(s)
    assert [r["image"] for r in read_score_rows(path)] == [f"img{i}.png" for i in range(6)]
    assert (path / "part-000003.parquet").stat().st_mode & 0o044  # not the temporary file's private mode
    table = pq.read_table(path)  # pyarrow.dataset: every part, in order
    assert table.column("image").to_pylist() == [f"img{i}.png" for i in [0, 1, 2, 3, 3, 4, 5]]
    assert table.schema.names == list(CSV_FIELDS)


def test_a_single_parquet_file_is_read_and_refused_for_resume(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "old.parquet"
    pq.write_table(pa.Table.from_pylist([s.record() for s in _scores(2)]), path)
    assert list(done_inputs(path)) == ["img0.png", "img1.png"]
    with pytest.raises(DataError, match="part-000000.parquet"):
        open_score_writer(path, resume=True)


def test_flagged_count_summary():
    count = FlaggedCount()
    for s in _scores(3):
        count.add(s)
    assert count.summary() == "flagged 2 of 3 scored images as AI-generated (operating point p0.5)"
