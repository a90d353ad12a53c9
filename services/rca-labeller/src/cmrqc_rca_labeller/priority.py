"""Which cases RCA should label first: those whose real-time QC is most in doubt.

The cost of a case (lower goes first) is 0 when the QC predictor said *uncertain* (its
prediction interval straddles the threshold), else the distance of its predicted
whole-heart Dice from the pass threshold: a case predicted at 0.71 against 0.70 is nearly as
doubtful as an uncertain one; a case predicted at 0.98 or 0.20 can wait. A case without a QC
result yet gets a configured middle cost. Ordering only: nothing is ever dropped.
"""

from __future__ import annotations

from cmrqc_shared.events import QcResult, SegmentationClass, Verdict

UNCERTAIN_COST = 0.0


def qc_priority_cost(result: QcResult, default_threshold: float = 0.7) -> float:
    """Priority cost in [0, 1] of the segmentation ``result`` is about (lower: sooner)."""
    if result.verdict == Verdict.UNCERTAIN:
        return UNCERTAIN_COST
    threshold = result.thresholds.get(SegmentationClass.WH.value, default_threshold)
    return abs(result.predicted_dsc.WH - threshold)
