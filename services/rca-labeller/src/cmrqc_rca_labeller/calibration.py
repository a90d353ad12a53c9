"""A monotone correction of the raw RCA estimate, fitted on QC_VAL, never on the test split.

The maximum over references is biased in a way that depends on the true Dice: a bad
segmentation can still land reasonably on *some* reference (over-estimate), and a perfect one
never scores 1 against another subject's anatomy (under-estimate). Per class, a monotone
piecewise-linear map from raw estimate to true Dice removes that bias: isotonic regression
(pool-adjacent-violators) on the validation cases, its block means as knots, linear in between,
flat beyond the ends. Monotone, so the ranking of cases — what the priority queue and the
retrainer's balancing use — never changes.

A calibration belongs to one reference set (its content hash) and one engine configuration:
``apply`` is only used when the hash matches, otherwise the raw estimate is published as is.

``cmrqc evaluate rca --split val --fit-calibration FILE`` writes one; the committed
``calibration/synthetic-k100.json`` is fitted that way on the default synthetic set.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from cmrqc_rca_labeller.engine import CLASS_NAMES
from cmrqc_shared.events import ClassScores

CLASSES = CLASS_NAMES
BUILTIN_CALIBRATION = Path(__file__).parent / "calibration" / "synthetic-k100.json"


def isotonic_knots(
    raw: NDArray[np.floating], true: NDArray[np.floating], min_block: int = 5
) -> tuple[list[float], list[float]]:
    """Knots (x, y) of the isotonic (non-decreasing) least-squares fit of ``true`` on ``raw``.

    Pool-adjacent-violators over the cases sorted by ``raw``; blocks smaller than
    ``min_block`` cases are merged into a neighbour so a single case never sets a knot. Each
    block becomes one knot at (mean raw, mean true).

    Raises:
        ValueError: different lengths, or no cases.
    """
    raw = np.asarray(raw, np.float64)
    true = np.asarray(true, np.float64)
    if raw.shape != true.shape or raw.size == 0:
        raise ValueError("raw and true need the same, non-zero length")
    order = np.argsort(raw, kind="stable")
    xs, ys = raw[order], true[order]
    # Blocks: [sum_x, sum_y, count]; merge while the block means decrease.
    blocks: list[list[float]] = []
    for x, y in zip(xs, ys, strict=True):
        blocks.append([x, y, 1.0])
        while len(blocks) > 1 and (
            blocks[-2][1] / blocks[-2][2] >= blocks[-1][1] / blocks[-1][2]
            or blocks[-2][2] < min_block
        ):
            last = blocks.pop()
            for i in range(3):
                blocks[-1][i] += last[i]
    if len(blocks) > 1 and blocks[-1][2] < min_block:
        last = blocks.pop()
        for i in range(3):
            blocks[-1][i] += last[i]
    knots_x = [b[0] / b[2] for b in blocks]
    knots_y = [b[1] / b[2] for b in blocks]
    return knots_x, knots_y


@dataclass(frozen=True)
class RcaCalibration:
    """Per-class monotone maps, for one reference set."""

    reference_set: str
    knots: dict[str, tuple[list[float], list[float]]]
    fitted_on: str
    cases: int

    @classmethod
    def fit(
        cls,
        raw: dict[str, NDArray[np.floating]],
        true: dict[str, NDArray[np.floating]],
        *,
        reference_set: str,
        fitted_on: str,
    ) -> RcaCalibration:
        """Fit every class of ``CLASSES`` (arrays of raw estimates and true Dice per class)."""
        knots = {name: isotonic_knots(raw[name], true[name]) for name in CLASSES}
        return cls(reference_set, knots, fitted_on, len(raw["WH"]))

    def apply_values(self, name: str, raw: NDArray[np.floating] | float) -> NDArray[np.float64]:
        xs, ys = self.knots[name]
        return np.clip(np.interp(raw, xs, ys), 0.0, 1.0)

    def apply(self, scores: ClassScores) -> ClassScores:
        """The corrected per-class estimate."""
        values = scores.model_dump()
        return ClassScores(
            **{name: float(self.apply_values(name, values[name])) for name in CLASSES}
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "reference_set": self.reference_set,
            "fitted_on": self.fitted_on,
            "cases": self.cases,
            "method": "isotonic (PAV, blocks >= 5 cases), linear between knots",
            "knots": {name: {"x": xs, "y": ys} for name, (xs, ys) in self.knots.items()},
        }

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=1) + "\n")

    @classmethod
    def load(cls, path: Path) -> RcaCalibration:
        """Read a calibration file.

        Raises:
            ValueError: a malformed file (missing class, knots of different lengths).
        """
        data = json.loads(path.read_text())
        knots: dict[str, tuple[list[float], list[float]]] = {}
        for name in CLASSES:
            entry = data["knots"].get(name)
            if entry is None or len(entry["x"]) != len(entry["y"]) or not entry["x"]:
                raise ValueError(f"{path}: no valid knots for {name}")
            knots[name] = ([float(v) for v in entry["x"]], [float(v) for v in entry["y"]])
        return cls(data["reference_set"], knots, data["fitted_on"], int(data["cases"]))


def calibration_for(reference_set: str, path: Path | None = None) -> RcaCalibration | None:
    """The calibration at ``path`` (default: the committed one) if it was fitted for this
    reference set; None otherwise (then the raw estimate stands)."""
    path = path or BUILTIN_CALIBRATION
    if not path.exists():
        return None
    calibration = RcaCalibration.load(path)
    return calibration if calibration.reference_set == reference_set else None
