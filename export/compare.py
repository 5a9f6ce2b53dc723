"""The parity report of ``spai export``: labelled check images in, ``export_report.json`` / ``.md`` out.

The comparator and its gates are :mod:`spai.infer.parity` (the library gates CPU routes with it too); this module reads
the check images a user passes and writes what the comparator found.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from spai.files import atomic_path
from spai.infer.images import IMAGE_EXTENSIONS
from spai.infer.parity import ParityReport

REPORT_JSON, REPORT_MD = "export_report.json", "export_report.md"  # in the output folder


def load_images(image_dir: str | os.PathLike) -> tuple[list[Path], np.ndarray | None]:
    """Image files of ``image_dir`` (sorted) and their labels from ``samples.csv`` (``image,class``) if present."""
    root = Path(image_dir)
    paths = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    table = root / "samples.csv"
    if not table.is_file():
        return paths, None
    with open(table, newline="") as f:
        classes = {row["image"]: row["class"] for row in csv.DictReader(f)}
    if not all(p.name in classes for p in paths):
        return paths, None
    return paths, np.array([int(classes[p.name]) for p in paths])


def _fmt(x: Any) -> str:
    if x is None:
        return "n/a"
    return f"{x:.3g}" if isinstance(x, float) and not math.isnan(x) else str(x)


def backends_table(backends: dict[str, dict]) -> list[str]:
    """The Markdown table of :attr:`ParityReport.backends` (also the benchmark report's parity table)."""
    lines = ["| backend | set | n | max abs Δlogit | mean abs Δlogit | max abs Δp (raw) | max abs Δp (calibrated) "
             "| flips | AUC Δ |", "|---|---|---|---|---|---|---|---|---|"]
    for name, entry in backends.items():
        for key in ("random_patches", "images"):
            if key in entry:
                s = entry[key]
                lines.append(f"| {name} ({entry['precision']}) | {key} | {s['n']} | {_fmt(s['max_abs_dlogit'])} | "
                             f"{_fmt(s['mean_abs_dlogit'])} | {_fmt(s['max_abs_dprob'])} | "
                             f"{_fmt(s.get('max_abs_dprob_calibrated'))} | {s['decision_flips']} | "
                             f"{_fmt(s['auc_delta'])} |")
    return lines


def summary_markdown(report: ParityReport, header: Iterable[str] = (), sections: Iterable[str] = ()) -> str:
    """A short human summary of ``report``, then ``sections`` (Markdown lines: the TensorRT compatibility)."""
    lines = ["# Export parity report", "", *header, "", *backends_table(report.backends)]
    lines += ["", f"Gates: {report.gates}", "", "Result: " + ("PASS" if report.passed else "FAIL")]
    lines += [f"- {f}" for f in report.failures] + [f"- note: {n}" for n in report.notes]
    extra = list(sections)
    return "\n".join(lines + ([""] + extra if extra else [])) + "\n"


def write_report(report: ParityReport, out_dir: str | os.PathLike, header: Iterable[str] = (),
                 extra: dict | None = None, sections: Iterable[str] = ()) -> tuple[Path, Path]:
    """:data:`REPORT_JSON` and :data:`REPORT_MD` in ``out_dir`` (written atomically)."""
    out = Path(out_dir)
    data = {"passed": report.passed, **asdict(report), **(extra or {})}
    json_path, md_path = out / REPORT_JSON, out / REPORT_MD
    with atomic_path(json_path) as tmp:
        tmp.write_text(json.dumps(data, indent=2))
    with atomic_path(md_path) as tmp:
        tmp.write_text(summary_markdown(report, header, sections))
    return json_path, md_path


