"""The reliability page shows the latest run; older runs stay in the results, and merging keeps a run's date."""

from __future__ import annotations

import json

import make_report
import results_store


def _run(date: str, requests: int, passed: bool, recorded: str = "") -> dict:
    return {"date": date, "recorded": recorded, "requests": requests, "concurrency": 32, "good": requests,
            "bad": 0, "passed": passed}


def test_the_page_shows_the_latest_run_of_each_size_and_counts_the_older(tmp_path):
    load = {"old 20k": _run("2026-11-30", 20000, False), "new 20k": _run("2026-12-02", 20000, True),
            "same day, earlier": _run("2026-12-02", 500, False, "2026-12-02T08:00:00+00:00"),
            "same day, later": _run("2026-12-02", 500, True, "2026-12-02T09:00:00+00:00")}
    assert list(make_report.latest_load_runs(load)) == ["same day, later", "new 20k"]  # newest first
    page = make_report.render({"load": load}, tmp_path / "page.md")
    assert "| new 20k |" in page and "| same day, later |" in page
    assert "old 20k" not in page and "same day, earlier" not in page
    assert "2 older load runs stay in `tools/reliability/results/load.json`" in page
    every = make_report.render({"load": load}, tmp_path / "page.md", every_run=True)
    assert all(f"| {name} |" in every for name in load) and "older load runs" not in every


def test_merge_stamps_new_records_and_keeps_a_rejudged_runs_date(tmp_path):
    (tmp_path / "load.json").write_text(json.dumps({"kept": {"date": "2026-11-01", "passed": True}}))
    results_store.merge([{"section": "load", "name": "new", "passed": True},
                         {"section": "load", "name": "rejudged", "date": "2026-11-02", "passed": False}], tmp_path)
    data = results_store.load_all(tmp_path)["load"]
    assert data["kept"] == {"date": "2026-11-01", "passed": True}
    assert data["rejudged"] == {"date": "2026-11-02", "passed": False}  # not re-dated: it is the old run's
    assert data["new"]["recorded"].startswith(data["new"]["date"])
    assert not list(tmp_path.glob(".*"))  # the atomic write left no temporary file
