"""Pass / fail / uncertain, per class and overall, from a prediction interval and rules.

* A class with a threshold t passes when its whole interval is at or above t (lower ≥ t),
  fails when its whole interval is below t (upper < t), and is uncertain when the interval
  straddles t. Classes without a threshold get no verdict.
* Overall: fail if any class fails, else uncertain if any is uncertain, else pass.
* Rules that overrule the model: an empty segmentation (no LV, LVM or RVC voxel), a labelmap
  whose grid disagrees with the image's, or labels outside 0..3 are a fail with the reason,
  whatever the network predicted. These never reach a confident pass.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from cmrqc_shared.events import Verdict

DEFAULT_THRESHOLDS: dict[str, float] = {"WH": 0.7}
"""Pass threshold per class, DSC (the paper's whole-heart 0.7)."""

EMPTY_SEGMENTATION = "empty-segmentation"
GRID_MISMATCH = "grid-mismatch"
INVALID_LABELS = "invalid-labels"
INVALID_VOLUME = "invalid-volume"


@dataclass(frozen=True)
class Decision:
    """The overall verdict, each thresholded class's verdict, and why a verdict was forced."""

    verdict: Verdict
    class_verdicts: dict[str, Verdict]
    reasons: list[str] = field(default_factory=list)


def class_verdict(lower: float, upper: float, threshold: float) -> Verdict:
    """PASS when lower ≥ threshold, FAIL when upper < threshold, else UNCERTAIN."""
    if lower >= threshold:
        return Verdict.PASS
    if upper < threshold:
        return Verdict.FAIL
    return Verdict.UNCERTAIN


def decide(
    lower: Mapping[str, float],
    upper: Mapping[str, float],
    thresholds: Mapping[str, float],
    forced_reasons: list[str] | tuple[str, ...] = (),
) -> Decision:
    """Combine the per-class verdicts; ``forced_reasons`` (rule violations) force FAIL.

    Raises:
        KeyError: a threshold names a class the interval does not have.
    """
    class_verdicts = {
        name: class_verdict(lower[name], upper[name], threshold)
        for name, threshold in thresholds.items()
    }
    reasons = list(forced_reasons)
    if reasons:
        return Decision(Verdict.FAIL, class_verdicts, reasons)
    verdicts = set(class_verdicts.values())
    if Verdict.FAIL in verdicts:
        overall = Verdict.FAIL
    elif Verdict.UNCERTAIN in verdicts:
        overall = Verdict.UNCERTAIN
    else:
        overall = Verdict.PASS
    return Decision(overall, class_verdicts, reasons)


def rule_violations(labels: NDArray[np.integer]) -> list[str]:
    """Reasons a (grid-checked) labelmap must fail regardless of the model: empty foreground."""
    return [] if np.any(labels > 0) else [EMPTY_SEGMENTATION]
