"""A correction of the raw RCA estimate, fitted on QC_VAL, never on the test split.

The maximum over references is biased in a way that depends on the true Dice: a bad
segmentation can still land reasonably on *some* reference (over-estimate), and a perfect one
never scores 1 against another subject's anatomy (under-estimate). Per class, a monotone
piecewise-linear map removes that bias: isotonic regression (pool-adjacent-violators) on the
validation cases, its block means as knots, linear in between, flat beyond the ends.

What the map reads is the class's *score*. In a one-feature calibration the score is the
class's own raw estimate, so the ranking of cases never changes. A joint calibration
(``fit(..., features=JOINT_FEATURES)``) first forms, per class, a least-squares linear score
from all four foreground maxima, their squares and pairwise products, then maps that score
isotonically: the maxima of the other classes carry information about this one (a poor RV
maximum with a good LV maximum is a different case from two middling ones), and on QC_VAL the
joint score lowers the error of every class. BG keeps its own one-feature map. With
``KEPT_FEATURES`` the score also reads what the kept references say besides their maximum
(``kept_statistics``: top-k mean, mean, spread, image similarity): two segmentations with the
same maximum, one matched by a single reference and one by all eight, are not equally good.

A calibration belongs to one reference set (its content hash) and one engine configuration:
``apply`` is only used when the hash matches, otherwise the raw estimate is published as is.

``cmrqc evaluate rca --split val --fit-calibration FILE [--calibration-form F]`` writes one;
the committed ``calibration/synthetic-k100.json`` is fitted that way on the default synthetic
set (see ``docs/preregistration.txt`` for which form and why).
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

JOINT_FEATURES: tuple[str, ...] = (
    "LV",
    "LVM",
    "RVC",
    "WH",
    "LV*LV",
    "LVM*LVM",
    "RVC*RVC",
    "WH*WH",
    "LV*RVC",
    "LVM*RVC",
    "LV*LVM",
)
"""The joint score's inputs: raw class estimates and products of two ("A*B")."""

JOINT_CLASSES: tuple[str, ...] = ("LV", "LVM", "RVC", "WH")
"""The classes a joint calibration scores from its features; BG keeps its own value."""

PER_CLASS_STATISTICS: tuple[str, ...] = ("topk", "mean", "sd")
"""The kinds of ``kept_statistics`` taken per class ("topk:LV", …)."""

SIMILARITY_STATISTICS: tuple[str, ...] = ("similarity:best", "similarity:mean")
"""The ``kept_statistics`` of the image similarity after registration."""

KEPT_FEATURES: tuple[str, ...] = (
    JOINT_FEATURES
    + tuple(f"{kind}:{name}" for kind in PER_CLASS_STATISTICS for name in JOINT_CLASSES)
    + SIMILARITY_STATISTICS
)
"""``JOINT_FEATURES`` and what the kept references say besides their maximum (``kept_statistics``):
per class the top-k mean, the mean and the spread, and how similar the references are."""

CALIBRATION_FORMS: dict[str, tuple[str, ...]] = {
    "one-feature": (),
    "maxima": JOINT_FEATURES,
    "kept": KEPT_FEATURES,
}
"""``--calibration-form``: the features each form's score reads (none: each class alone)."""

STATISTICS: tuple[str, ...] = (
    tuple(CLASSES)
    + tuple(f"{kind}:{name}" for kind in PER_CLASS_STATISTICS for name in CLASSES)
    + SIMILARITY_STATISTICS
)
"""What a feature may name: a class (its maximum over the kept references, the raw estimate),
or one of ``kept_statistics``."""


def kept_statistics(
    dice: NDArray[np.floating], similarity: NDArray[np.floating], top_k: int
) -> dict[str, float]:
    """What a calibration may read of the references the estimate is taken over, besides the
    maximum: per class the mean of the ``top_k`` best (``topk:``), the mean (``mean:``) and the
    population standard deviation (``sd:``) over all of them; the image similarity after
    registration of the most similar (``similarity:best``) and its mean (``similarity:mean``).

    Args:
        dice: ``[references, 5]`` Dice per class (``CLASSES`` order) of the kept references.
        similarity: ``[references]`` their image similarity after registration.
    """
    dice = np.asarray(dice, np.float64)
    similarity = np.asarray(similarity, np.float64)
    top = -np.sort(-dice, axis=0)[: max(1, min(top_k, dice.shape[0]))].mean(0)
    out: dict[str, float] = {}
    for index, name in enumerate(CLASSES):
        out[f"topk:{name}"] = float(top[index])
        out[f"mean:{name}"] = float(dice[:, index].mean())
        out[f"sd:{name}"] = float(dice[:, index].std())
    out["similarity:best"] = float(similarity.max())
    out["similarity:mean"] = float(similarity.mean())
    return out


def feature_matrix(
    raw: dict[str, NDArray[np.floating]], features: tuple[str, ...]
) -> NDArray[np.float64]:
    """``[cases, features]``: each feature a statistic (``STATISTICS``: a class name is its raw
    estimate) or a product ("A*B") of two.

    Raises:
        ValueError: a feature that names no statistic, or a statistic ``raw`` lacks.
    """
    columns = []
    for feature in features:
        factors = feature.split("*")
        if any(name not in STATISTICS for name in factors):
            raise ValueError(f"calibration feature {feature!r} names no class or statistic")
        missing = [name for name in factors if name not in raw]
        if missing:
            raise ValueError(f"calibration feature {feature!r} needs {missing}, not given")
        column = np.ones_like(np.asarray(raw[factors[0]], np.float64))
        for name in factors:
            column = column * np.asarray(raw[name], np.float64)
        columns.append(column)
    return np.stack(columns, axis=-1)


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
class LinearScore:
    """A class's joint score: ``weights`` over the calibration's features, plus ``intercept``."""

    weights: list[float]
    intercept: float


@dataclass(frozen=True)
class RcaCalibration:
    """Per-class maps from a score (the raw estimate, or a joint score) to Dice, for one
    reference set."""

    reference_set: str
    knots: dict[str, tuple[list[float], list[float]]]
    fitted_on: str
    cases: int
    features: tuple[str, ...] = ()
    scores: dict[str, LinearScore] | None = None
    """Per class in ``JOINT_CLASSES``: its linear score over ``features``; None: one-feature."""

    @classmethod
    def fit(
        cls,
        raw: dict[str, NDArray[np.floating]],
        true: dict[str, NDArray[np.floating]],
        *,
        reference_set: str,
        fitted_on: str,
        features: tuple[str, ...] = (),
    ) -> RcaCalibration:
        """Fit every class of ``CLASSES`` (arrays of raw estimates and true Dice per class;
        ``raw`` also holds the ``kept_statistics`` that ``features`` name, case by case).

        With ``features`` (``JOINT_FEATURES``, ``KEPT_FEATURES``), each class of ``JOINT_CLASSES``
        gets a least-squares linear score over them first, and its isotonic map reads that
        score; without, each class's map reads its own raw estimate.
        """
        scores: dict[str, LinearScore] | None = None
        if features:
            design = feature_matrix(raw, features)
            design = np.hstack([design, np.ones((design.shape[0], 1))])
            scores = {}
            for name in JOINT_CLASSES:
                solution, *_ = np.linalg.lstsq(design, np.asarray(true[name], np.float64))
                scores[name] = LinearScore([float(v) for v in solution[:-1]], float(solution[-1]))
        provisional = cls(reference_set, {}, fitted_on, len(raw["WH"]), features, scores)
        inputs = provisional.scores_of(raw)
        knots = {name: isotonic_knots(inputs[name], true[name]) for name in CLASSES}
        return cls(reference_set, knots, fitted_on, len(raw["WH"]), features, scores)

    def scores_of(self, raw: dict[str, NDArray[np.floating]]) -> dict[str, NDArray[np.float64]]:
        """What each class's map reads: its joint score, or its own raw estimate."""
        design = feature_matrix(raw, self.features) if self.scores else None
        out: dict[str, NDArray[np.float64]] = {}
        for name in CLASSES:
            score = self.scores.get(name) if self.scores else None
            if score is None or design is None:
                out[name] = np.asarray(raw[name], np.float64)
            else:
                out[name] = design @ np.asarray(score.weights) + score.intercept
        return out

    def apply_arrays(self, raw: dict[str, NDArray[np.floating]]) -> dict[str, NDArray[np.float64]]:
        """The corrected estimate of every class, for arrays of cases (raw estimates per class,
        and the statistics the features name)."""
        inputs = self.scores_of(raw)
        return {
            name: np.clip(np.interp(inputs[name], *self.knots[name]), 0.0, 1.0) for name in CLASSES
        }

    def apply(self, scores: ClassScores, statistics: dict[str, float] | None = None) -> ClassScores:
        """The corrected per-class estimate; ``statistics``: ``kept_statistics`` of the same
        estimate, which a calibration with such features needs.

        Raises:
            ValueError: the calibration reads a statistic that was not given.
        """
        values = {name: np.array([value]) for name, value in scores.model_dump().items()}
        values |= {name: np.array([value]) for name, value in (statistics or {}).items()}
        corrected = self.apply_arrays(values)
        return ClassScores(**{name: float(corrected[name][0]) for name in CLASSES})

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "reference_set": self.reference_set,
            "fitted_on": self.fitted_on,
            "cases": self.cases,
            "method": "isotonic (PAV, blocks >= 5 cases), linear between knots",
        }
        if self.scores:
            data["method"] = (
                "per class a least-squares linear score over the features, then isotonic "
                "(PAV, blocks >= 5 cases) from score to Dice, linear between knots"
            )
            data["features"] = list(self.features)
            data["scores"] = {
                name: {"weights": score.weights, "intercept": score.intercept}
                for name, score in self.scores.items()
            }
        data["knots"] = {name: {"x": xs, "y": ys} for name, (xs, ys) in self.knots.items()}
        return data

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=1) + "\n")

    @classmethod
    def load(cls, path: Path) -> RcaCalibration:
        """Read a calibration file.

        Raises:
            ValueError: a malformed file (missing class, knots of different lengths, a score
                whose weights do not match its features, a feature that names no class).
        """
        data = json.loads(path.read_text())
        knots: dict[str, tuple[list[float], list[float]]] = {}
        for name in CLASSES:
            entry = data["knots"].get(name)
            if entry is None or len(entry["x"]) != len(entry["y"]) or not entry["x"]:
                raise ValueError(f"{path}: no valid knots for {name}")
            knots[name] = ([float(v) for v in entry["x"]], [float(v) for v in entry["y"]])
        features = tuple(str(f) for f in data.get("features", ()))
        scores: dict[str, LinearScore] | None = None
        if "scores" in data:
            try:
                feature_matrix({name: np.zeros(1) for name in STATISTICS}, features)
            except ValueError as error:
                raise ValueError(f"{path}: {error}") from error
            scores = {}
            for name, entry in data["scores"].items():
                if name not in CLASSES or len(entry["weights"]) != len(features):
                    raise ValueError(f"{path}: the score of {name} does not match the features")
                scores[name] = LinearScore(
                    [float(v) for v in entry["weights"]], float(entry["intercept"])
                )
        return cls(
            data["reference_set"], knots, data["fitted_on"], int(data["cases"]), features, scores
        )


def calibration_for(reference_set: str, path: Path | None = None) -> RcaCalibration | None:
    """The calibration at ``path`` (default: the committed one) if it was fitted for this
    reference set; None otherwise (then the raw estimate stands)."""
    path = path or BUILTIN_CALIBRATION
    if not path.exists():
        return None
    calibration = RcaCalibration.load(path)
    return calibration if calibration.reference_set == reference_set else None
