"""One image's score (:class:`ImageScore`) and its row: the one schema every scorer writes, in CSV, Parquet, Ray's
blocks and the review page (:data:`CSV_FIELDS`; ``None`` is the one "missing" value, written empty in CSV)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

SCORE_FIELDS: tuple[str, ...] = ("image", "probability", "logit", "decision", "operating_point", "num_patches", "latency_ms", "error")


KEY_FIELDS: tuple[str, ...] = ("size_bytes", "mtime")  # what an input was when it was scored: a changed input is scored again


CSV_FIELDS: tuple[str, ...] = SCORE_FIELDS + KEY_FIELDS


@dataclass
class ImageScore:
    """One image's result, wherever it was scored: ``probability`` (1 = AI-generated; calibrated when the model
    is), the raw ``logit``, ``decision`` (flagged as AI-generated at ``operating_point``), the patch count, the
    attention over its patches (mean over heads, in :func:`spai.model.patching.patch_grid` order), the time it took
    and, when it failed, ``error`` (the other fields then stay empty); ``size_bytes`` / ``mtime``: the input's,
    when known (the resume key)."""

    image: str
    probability: float | None = None
    logit: float | None = None
    num_patches: int = 0
    latency_ms: float = 0.0
    error: str = ""
    attention: np.ndarray | None = field(default=None, repr=False)
    decision: bool | None = None
    operating_point: str = ""
    size_bytes: int | None = None
    mtime: float | None = None

    def record(self) -> dict[str, Any]:
        """The typed row (:data:`CSV_FIELDS`): what Parquet stores and :func:`read_score_rows` returns."""
        return {"image": self.image, "probability": self.probability, "logit": self.logit,
                "decision": self.decision, "operating_point": self.operating_point if not self.error else "",
                "num_patches": self.num_patches if not self.error else None, "latency_ms": self.latency_ms,
                "error": self.error, "size_bytes": self.size_bytes, "mtime": self.mtime}

    def row(self) -> dict[str, Any]:
        """The CSV row (:data:`CSV_FIELDS`) of ``spai predict`` and ``spai score``; ``decision`` is 1 (flagged as
        AI-generated) or 0."""
        return csv_row_from_record(self.record())


def csv_row_from_record(record: Mapping[str, Any]) -> dict[str, str]:
    """A typed row as CSV text: probabilities to 6 decimals, ``mtime`` exactly (repr), None as empty."""
    def num(x: Any, fmt: str) -> str:
        return "" if x is None else format(x, fmt)
    decision = record.get("decision")
    return {"image": record["image"], "probability": num(record.get("probability"), ".6f"),
            "logit": num(record.get("logit"), ".6f"), "decision": "" if decision is None else str(int(decision)),
            "operating_point": record.get("operating_point") or "", "num_patches": num(record.get("num_patches"), "d"),
            "latency_ms": num(record.get("latency_ms"), ".2f"), "error": record.get("error") or "",
            "size_bytes": num(record.get("size_bytes"), "d"),
            "mtime": "" if record.get("mtime") is None else repr(float(record["mtime"]))}


def record_from_csv_row(row: Mapping[str, str | None]) -> dict[str, Any]:
    """A CSV row back to typed values (empty -> None); columns a file lacks read as None."""
    def get(name: str, kind: type) -> Any:
        text = (row.get(name) or "").strip()
        return kind(text) if text else None
    decision = get("decision", int)
    return {"image": row.get("image") or "", "probability": get("probability", float), "logit": get("logit", float),
            "decision": None if decision is None else bool(decision), "operating_point": row.get("operating_point")
            or "", "num_patches": get("num_patches", int), "latency_ms": get("latency_ms", float),
            "error": row.get("error") or "", "size_bytes": get("size_bytes", int), "mtime": get("mtime", float)}


@dataclass
class FlaggedCount:
    """The closing line of ``spai predict`` / ``spai score``, counted row by row (no rows kept)."""

    flagged: int = 0
    decided: int = 0
    points: set[str] = field(default_factory=set)

    def add(self, score: ImageScore) -> None:
        if not score.error and score.decision is not None:
            self.decided += 1
            self.flagged += bool(score.decision)
            self.points.add(score.operating_point)

    def summary(self) -> str:
        return (f"flagged {self.flagged} of {self.decided} scored images as AI-generated "
                f"(operating point {', '.join(sorted(self.points)) or 'none'})")
