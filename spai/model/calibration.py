"""A model's calibration: temperature/bias on the raw logit and the operating points (thresholds at chosen
false-positive rates) that decide. A checkpoint carries it (``spai calibrate`` fits it: :mod:`spai.train.calibration`),
an export folder holds it as ``calibration.json`` beside the raw-logit graphs. Pure numpy."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from spai.errors import CalibrationError
from spai.model.specs import CALIBRATION_FILE


def sigmoid(x: float | np.ndarray) -> np.ndarray:
    """logit -> probability: the numerically stable logistic function, computed in float64 and rounded once to
    float32 (the one sigmoid of every scorer)."""
    x = np.asarray(x, np.float64)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(np.float32)


@dataclass(frozen=True)
class OperatingPoint:
    """A named decision rule: flag an image as AI-generated when its probability is >= ``threshold``."""

    name: str
    threshold: float

    def decide(self, probabilities: float | np.ndarray) -> np.ndarray:
        """True where the (calibrated) probability reaches the threshold."""
        return np.asarray(probabilities, np.float64) >= self.threshold


UNCALIBRATED_POINT = OperatingPoint("p0.5", 0.5)


@dataclass(frozen=True)
class Calibration:
    """How the model's raw logits ``z`` become what users act on, the ONE place of it: the probability
    ``sigmoid(z / temperature + bias)`` (temperature or Platt scaling, fitted by ``spai calibrate``) and decisions
    at named operating points (thresholds on that probability). The default instance is an uncalibrated model:
    ``sigmoid(z)``, decided at 0.5. Built from a checkpoint's plain-data ``calibration`` entry with
    :meth:`from_entry`; the fitting is :mod:`spai.train.calibration`."""

    method: str = "none"
    temperature: float = 1.0
    bias: float = 0.0
    operating_points: tuple[OperatingPoint, ...] = (UNCALIBRATED_POINT,)
    default: str = UNCALIBRATED_POINT.name

    def __post_init__(self) -> None:
        if not (np.isfinite(self.temperature) and self.temperature > 0 and np.isfinite(self.bias)):
            raise CalibrationError(f"calibration temperature {self.temperature} / bias {self.bias} must be finite "
                                   "(temperature > 0); re-run `spai calibrate`.")
        names = [p.name for p in self.operating_points]
        if not all(re.fullmatch(r"[A-Za-z0-9_.%+-]+", n) for n in names):
            raise CalibrationError(f"operating point names {names} may hold only letters, digits and _.%+-.")
        if self.default not in names or len(set(names)) != len(names):
            raise CalibrationError(f"calibration default operating point {self.default!r} is not one of {names} "
                                   "(or a name repeats); re-run `spai calibrate`.")

    @property
    def calibrated(self) -> bool:
        return self.method != "none"

    def probability(self, logits: float | np.ndarray) -> np.ndarray:
        """Logits -> probabilities (float32, through the one :func:`sigmoid`); exactly ``sigmoid(z)`` when
        uncalibrated."""
        z = np.asarray(logits, np.float64)
        return sigmoid(z if not self.calibrated else z / self.temperature + self.bias)

    def operating_point(self, name: str | None = None) -> OperatingPoint:
        """The operating point called ``name`` (None or "": the default); :class:`CalibrationError` if unknown."""
        wanted = name or self.default
        for point in self.operating_points:
            if point.name == wanted:
                return point
        raise CalibrationError(f"unknown operating point {wanted!r}; this model has "
                               f"{', '.join(p.name for p in self.operating_points)} (default {self.default}).")

    @classmethod
    def from_entry(cls, entry: dict[str, Any] | None) -> Calibration:
        """From a checkpoint's ``calibration`` entry (plain data; None: uncalibrated). Operating points that were
        refused when fitting (no threshold) are not usable."""
        if not entry:
            return cls()
        try:
            points = tuple(OperatingPoint(str(p["name"]), float(p["threshold"]))
                           for p in entry.get("operating_points", ()) if p.get("threshold") is not None)
            return cls(str(entry["method"]), float(entry["temperature"]), float(entry.get("bias") or 0.0), points,
                       str(entry["default"]))
        except (KeyError, TypeError, ValueError) as e:
            raise CalibrationError(f"the checkpoint's calibration entry is malformed ({type(e).__name__}: {e}); "
                                   "re-run `spai calibrate`.") from e

    def to_entry(self) -> dict[str, Any]:
        """The plain-data form :meth:`from_entry` reads (what decisions need; the fit's statistics are not kept)."""
        return {"method": self.method, "temperature": self.temperature, "bias": self.bias, "default": self.default,
                "operating_points": [{"name": p.name, "threshold": p.threshold} for p in self.operating_points]}


UNCALIBRATED = Calibration()


def write_export_calibration(calibration: Calibration, directory: str | Path) -> Path | None:
    """Write a calibrated model's :class:`Calibration` beside its exported graphs (where ``spai repository``
    reads it); an uncalibrated model removes a stale file instead. Returns the file written, if any."""
    path = Path(directory) / CALIBRATION_FILE
    if not calibration.calibrated:
        path.unlink(missing_ok=True)
        return None
    path.write_text(json.dumps(calibration.to_entry(), indent=2) + "\n")
    return path


def calibration_from_export(directory: str | Path) -> Calibration:
    """The calibration an export directory carries (uncalibrated when it has no calibration file)."""
    path = Path(directory) / CALIBRATION_FILE
    if not path.is_file():
        return UNCALIBRATED
    try:
        return Calibration.from_entry(json.loads(path.read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CalibrationError(f"{path} is not valid JSON ({e}); re-export the checkpoint.") from e
