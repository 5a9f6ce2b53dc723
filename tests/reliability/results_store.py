"""Recorded reliability results: ``results/<section>.json``, a dict name -> fields (merged run after run)."""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def load_all() -> dict[str, dict[str, dict]]:
    out: dict[str, dict[str, dict]] = {}
    for f in sorted(RESULTS_DIR.glob("*.json")):
        try:
            out[f.stem] = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
    return out


def merge(records: list[dict]) -> None:
    """Add/replace ``records`` (each with ``section`` and ``name``; dated today unless they carry a ``date``) in
    their section files, atomically."""
    RESULTS_DIR.mkdir(exist_ok=True)
    today = datetime.date.today().isoformat()
    by_section: dict[str, list[dict]] = {}
    for r in records:
        by_section.setdefault(r["section"], []).append(r)
    for section, recs in by_section.items():
        path = RESULTS_DIR / f"{section}.json"
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            data = {}
        for r in recs:
            fields = {k: v for k, v in r.items() if k not in ("section", "name")}
            data[r["name"]] = {"date": today, **fields}  # a re-judged record keeps the date of its run
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True, default=str) + "\n")
        os.replace(tmp, path)
