"""Recorded reliability results: ``results/<section>.json``, a dict name -> fields, merged run after run.

Results are only written on request (``pytest tests/reliability --record``, ``load_test.py --record``), so a plain
test run leaves the tracked files as they were. A record keeps its run's ``date`` and ``recorded`` time: the report
shows the latest run and the older ones stay here.
"""

from __future__ import annotations

import datetime
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from spai.files import atomic_path  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def load_all(results_dir: Path = RESULTS_DIR) -> dict[str, dict[str, dict]]:
    """Every section file: section -> name -> fields (an unreadable file is skipped, not fatal for a report)."""
    out: dict[str, dict[str, dict]] = {}
    for f in sorted(results_dir.glob("*.json")):
        try:
            out[f.stem] = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
    return out


def merge(records: list[dict], results_dir: Path = RESULTS_DIR) -> None:
    """Add or replace ``records`` (each with ``section`` and ``name``) in their section files, atomically.

    A record is dated now unless it carries its own ``date`` / ``recorded`` (a re-judged run keeps its run's)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    stamp = {"date": now.date().isoformat(), "recorded": now.isoformat(timespec="seconds")}
    by_section: dict[str, list[dict]] = {}
    for r in records:
        by_section.setdefault(r["section"], []).append(r)
    for section, recs in by_section.items():
        path = results_dir / f"{section}.json"
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            data = {}
        for r in recs:
            fields = {k: v for k, v in r.items() if k not in ("section", "name")}
            data[r["name"]] = {**({} if "date" in fields else stamp), **fields}
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True, default=str) + "\n")
