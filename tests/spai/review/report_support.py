"""Synthetic runs for the report tests and the report's measurements (tools/report_timing.py): images on disk, a
scores file like the scorers write, some errors and missing source files."""

from __future__ import annotations

import csv
import importlib.util
import os
from pathlib import Path

import numpy as np
from PIL import Image

from spai.infer.scores import CSV_FIELDS

ROOT = Path(__file__).resolve().parents[3]
FIELDS = CSV_FIELDS  # the columns `spai predict` / `spai score` write


def load_chromium():
    spec = importlib.util.spec_from_file_location("spai_test_chromium", Path(__file__).with_name("chromium.py"))
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def write_images(directory: Path, count: int, seed: int = 0) -> list[Path]:
    """``count`` distinct small JPEGs (blocky noise, so each thumbnail differs), ten per folder."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        path = directory / f"batch_{i // 10:03d}" / f"photo_{i:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        blocks = (rng.random((6, 8, 3)) * 255).astype(np.uint8)
        Image.fromarray(blocks).resize((320, 240), Image.Resampling.NEAREST).save(path, quality=85)
        paths.append(path)
    return paths


def _linked(pool: list[Path], directory: Path, count: int) -> list[Path]:
    paths = []
    for i in range(count):
        path = directory / f"batch_{i // 10:03d}" / f"photo_{i:06d}{pool[i % len(pool)].suffix.lower()}"
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(pool[i % len(pool)], path)
        except OSError:  # another file system: a copy
            path.write_bytes(pool[i % len(pool)].read_bytes())
        paths.append(path)
    return paths


def scores_records(names: list[str], seed: int = 0, errors: int = 0, threshold: float = 0.5) -> list[dict]:
    """One scores row per name (probabilities skewed low, as a mostly real run); the last ``errors`` fail."""
    rng = np.random.default_rng(seed)
    probs = rng.beta(0.6, 2.5, len(names))
    rows = []
    for i, (name, p) in enumerate(zip(names, probs, strict=True)):
        if i >= len(names) - errors:
            rows.append({"image": name, "probability": "", "logit": "", "decision": "", "operating_point": "",
                         "num_patches": "", "latency_ms": "1.20", "error": f"{name}: not a recognised image format "
                                                                           "(is it really an image?)."})
            continue
        rows.append({"image": name, "probability": f"{p:.6f}", "logit": f"{np.log(p / (1 - p)):.6f}",
                     "decision": int(p >= threshold), "operating_point": "fpr0.05", "num_patches": 1 + i % 30,
                     "latency_ms": f"{20 + (i % 17):.2f}", "error": ""})
    return rows


def write_scores_csv(rows: list[dict], path: Path) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=[*FIELDS, "source_bytes"])  # an extra column, as issue 23 may add
        writer.writeheader()
        writer.writerows({**r, "source_bytes": 1234} for r in rows)
    return path


def synthetic_run(directory: Path, rows: int, images: int, pool: list[Path] | None = None) -> Path:
    """``rows`` scored names under ``directory`` (cwd-relative like the scorers write): ``images`` real files
    (generated, or hard links to the photos of ``pool``), the rest hard links to them (distinct names), about
    0.5% errors; returns the CSV."""
    real = write_images(directory / "photos", images) if not pool else _linked(pool, directory / "photos", images)
    names = [os.path.relpath(p, directory) for p in real]
    for i in range(images, rows):
        path = directory / "photos" / f"batch_{i // 1000:03d}" / f"photo_{i:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        os.link(real[i % images], path)
        names.append(os.path.relpath(path, directory))
    return write_scores_csv(scores_records(names, errors=max(1, rows // 200)), directory / "scores.csv")
