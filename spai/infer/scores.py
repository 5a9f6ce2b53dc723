"""One image's score (:class:`ImageScore`) and its row: the one schema every scorer writes.

The row's columns are the fields of :class:`ImageScore` declared with :func:`column`, in the order they give
(:data:`COLUMNS`, :data:`CSV_FIELDS`). Every form of the row derives from them: the typed row
(:meth:`ImageScore.record`, what Parquet stores), its CSV text (:func:`csv_row_from_record`,
:func:`record_from_csv_row`), the Arrow schema (:func:`spai.corpus.writers.arrow_schema`), Ray's block columns
(:func:`spai.corpus.ray_scoring.columns_from_scores`) and the review page's rows (:meth:`ImageScore.from_record`).
A new column is one field here (plus whatever displays it). ``None`` is the one "missing" value: empty in CSV, null
in Parquet and Arrow (:meth:`Column.parse` also reads NaN, numpy's form of an Arrow null, as None).
"""

from __future__ import annotations

import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

KEY_FIELDS: tuple[str, ...] = ("size_bytes", "mtime")  # the resume key: what an input was when it was scored
_BOOLS = {"1": True, "1.0": True, "true": True, "0": False, "0.0": False, "false": False}


def column(position: int, fmt: str = "", **options: Any) -> Any:
    """A field of :class:`ImageScore` that is a column of the row, at ``position``; ``fmt``: how CSV writes it (a
    format spec; ``"r"``: repr, exact)."""
    return field(metadata={"column": position, "fmt": fmt}, **options)


@dataclass
class ImageScore:
    """One image's result, wherever it was scored: ``probability`` (1 = AI-generated; calibrated when the model
    is), the raw ``logit``, ``decision`` (flagged as AI-generated at ``operating_point``), the patch count, the
    attention over its patches (mean over heads, in :func:`spai.model.patching.patch_grid` order), the time it took
    and, when it failed, ``error`` (the other fields then stay empty: the row holds no patch count either);
    ``size_bytes`` / ``mtime``: the input's, when known (the resume key)."""

    image: str = column(0)
    probability: float | None = column(1, ".6f", default=None)
    logit: float | None = column(2, ".6f", default=None)
    num_patches: int | None = column(5, default=0)
    latency_ms: float | None = column(6, ".2f", default=0.0)
    error: str | None = column(7, default=None)
    attention: np.ndarray | None = field(default=None, repr=False)
    decision: bool | None = column(3, default=None)
    operating_point: str | None = column(4, default="")  # "" until decided (serving packs it as bytes); row: None
    size_bytes: int | None = column(8, default=None)
    mtime: float | None = column(9, "r", default=None)

    def record(self) -> dict[str, Any]:
        """The typed row (:data:`CSV_FIELDS`, None where missing, an empty text too): what Parquet stores and
        :func:`spai.corpus.writers.read_score_rows` returns."""
        values = {c.name: getattr(self, c.name) for c in COLUMNS}
        record = {name: None if value == "" else value for name, value in values.items()}
        if self.error:
            record["num_patches"] = None  # a failed image has no patch count (0 in the score)
        return record

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> ImageScore:
        """A row back as a score, each value as its column's type (:meth:`Column.parse`); a column the row lacks
        is None. Raises ValueError for a value that is not of its column's type."""
        return cls(**{c.name: c.parse(record.get(c.name)) for c in COLUMNS})


@dataclass(frozen=True)
class Column:
    """One column of the row: its name, its type (str, int, float or bool) and how CSV writes it."""

    name: str
    kind: type
    fmt: str = ""

    def text(self, value: Any) -> str:
        """The CSV cell: empty for None, a bool as 1 / 0, a number by ``fmt`` (``r``: repr, exact)."""
        if value is None:
            return ""
        if self.kind is bool:
            return str(int(value))
        return repr(float(value)) if self.fmt == "r" else format(value, self.fmt)

    def parse(self, raw: Any) -> Any:
        """A CSV cell, a file's value or a numpy one as this column's type; empty, null and NaN are None (NaN: how
        numpy holds an Arrow null, in a text column too where Ray converts a column of nulls)."""
        if raw is None or raw == "" or raw != raw:  # NaN: the one value not equal to itself
            return None
        if self.kind is str:
            return str(raw)
        text = str(raw).strip()
        if text.lower() in ("", "nan", "none"):
            return None
        if self.kind is bool:
            if text.lower() not in _BOOLS:
                raise ValueError(f"column {self.name!r} holds {raw!r}, not 1 (flagged), 0 or nothing")
            return _BOOLS[text.lower()]
        if self.kind is int and text.lstrip("-").isdigit():
            return int(text)  # exact, however large
        try:
            number = float(text)
        except ValueError:
            raise ValueError(f"column {self.name!r} holds {raw!r}, not a number") from None
        if not math.isfinite(number):
            return None
        return number if self.kind is float else int(number)


def _kind(hint: Any) -> type:
    """str, int, float or bool out of an annotation such as ``float | None``."""
    return next(t for t in typing.get_args(hint) or (hint,) if t is not type(None))


def _columns() -> tuple[Column, ...]:
    hints = typing.get_type_hints(ImageScore)
    placed = sorted((f.metadata["column"], Column(f.name, _kind(hints[f.name]), f.metadata["fmt"]))
                    for f in fields(ImageScore) if "column" in f.metadata)
    return tuple(c for _, c in placed)


COLUMNS: tuple[Column, ...] = _columns()
CSV_FIELDS: tuple[str, ...] = tuple(c.name for c in COLUMNS)


def csv_row_from_record(record: Mapping[str, Any]) -> dict[str, str]:
    """A typed row as CSV text (:meth:`Column.text`): probabilities to 6 decimals, ``mtime`` exactly, None empty."""
    return {c.name: c.text(record.get(c.name)) for c in COLUMNS}


def record_from_csv_row(row: Mapping[str, str | None]) -> dict[str, Any]:
    """A CSV row back to typed values (empty -> None); columns a file lacks read as None."""
    return {c.name: c.parse(row.get(c.name)) for c in COLUMNS}


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
            self.points.add(score.operating_point or "")

    def summary(self) -> str:
        return (f"flagged {self.flagged} of {self.decided} scored images as AI-generated "
                f"(operating point {', '.join(sorted(self.points)) or 'none'})")
