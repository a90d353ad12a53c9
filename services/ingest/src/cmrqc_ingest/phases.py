"""Cardiac phases: split a cine stack into phases, pick end-diastole and end-systole.

**Split.** Within each slice position the frames are ranked by trigger time (TriggerTime for
classic MR, NominalCardiacTriggerDelayTime — else ActualCardiacTriggerDelayTime — per frame
for Enhanced MR), ties broken by the temporal position index, then InstanceNumber. Phase p is
the p-th frame of every slice. Ranking per slice, rather than grouping by equal trigger time,
is what real cine needs: each slice is a separate breath-hold, so the same phase has slightly
different trigger times on different slices. Every slice must have the same number of
frames. A phase's trigger time is the median over its slices.

**ED** is phase 0, the smallest trigger time (the ECG R wave triggers acquisition, so
end-diastole is the first frame after it).

**ES**, with exactly two phases (the synthetic studies, and ED/ES-only exports), is the other
one. With more, ES is the phase that minimises the bright blood-pool area in a central
region: the middle half of the slices, the central half of rows and columns (where the heart
is in a planned short-axis FOV), counting pixels brighter than an Otsu threshold computed
over that region in all phases. Bright-blood cine (bSSFP) shows the cavities bright, and
their area is smallest at end-systole. Ties go to the earlier phase.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from cmrqc_ingest.frames import Frame


class PhaseError(Exception):
    """The frames cannot be split into consistent phases (a series-level failure)."""

    def __init__(self, message: str, reason: str = "inconsistent-phases") -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class CinePhase:
    """One cardiac phase: a frame per slice, in slice order."""

    index: int
    frames: tuple[Frame, ...]
    """``frames[k]`` lies at slice position k."""
    trigger_time_ms: float | None
    """Median trigger time over the slices, ms after the R wave."""


def _order_key(frame: Frame) -> tuple[float, int, int, str]:
    return (
        frame.trigger_time_ms if frame.trigger_time_ms is not None else 0.0,
        frame.temporal_index if frame.temporal_index is not None else 0,
        frame.instance_number if frame.instance_number is not None else 0,
        frame.key,
    )


def has_timing(frames: Sequence[Frame]) -> bool:
    """Whether frames carry cardiac timing (a trigger time or a temporal index)."""
    return any(f.trigger_time_ms is not None or f.temporal_index is not None for f in frames)


def split_phases(slices: Sequence[Sequence[Frame]]) -> list[CinePhase]:
    """Split a stack (``slices[k]`` = every frame at position k) into cardiac phases.

    Raises:
        PhaseError: slices hold different numbers of frames (a slice or phase missing).
    """
    counts = {len(s) for s in slices}
    if len(counts) != 1:
        raise PhaseError(
            f"slices hold different numbers of phases ({sorted(counts)}): "
            "an instance is missing or duplicated"
        )
    ranked = [sorted(s, key=_order_key) for s in slices]
    phases = []
    for p in range(counts.pop()):
        frames = tuple(r[p] for r in ranked)
        times = [f.trigger_time_ms for f in frames if f.trigger_time_ms is not None]
        phases.append(
            CinePhase(
                index=p,
                frames=frames,
                trigger_time_ms=float(np.median(times)) if times else None,
            )
        )
    return phases


def otsu_threshold(values: NDArray[np.floating], bins: int = 256) -> float:
    """Otsu's threshold of ``values`` (maximises the between-class variance)."""
    hist, edges = np.histogram(values, bins=bins)
    centres = 0.5 * (edges[:-1] + edges[1:])
    weights = hist.astype(np.float64)
    w0 = np.cumsum(weights)
    w1 = w0[-1] - w0
    m0 = np.cumsum(weights * centres)
    mean0 = np.divide(m0, w0, out=np.zeros_like(m0), where=w0 > 0)
    mean1 = np.divide(m0[-1] - m0, w1, out=np.zeros_like(m0), where=w1 > 0)
    between = w0 * w1 * (mean0 - mean1) ** 2
    return float(centres[int(np.argmax(between))])


def select_es(phases: Sequence[CinePhase], load: Callable[[Frame], NDArray[np.floating]]) -> int:
    """Index of the end-systolic phase (see the module docstring for the rule).

    Args:
        phases: the phases in trigger-time order; phase 0 is ED.
        load: returns a frame's pixels (rescaled) as a (rows, columns) array.

    Raises:
        PhaseError: fewer than two phases.
    """
    if len(phases) < 2:
        raise PhaseError("end-systole needs at least two phases", reason="not-cine")
    if len(phases) == 2:
        return 1
    n = len(phases[0].frames)
    lo, hi = n // 4, max(n // 4 + 1, (3 * n + 3) // 4)
    regions = []
    for phase in phases:
        crops = []
        for frame in phase.frames[lo:hi]:
            image = load(frame)
            r, c = image.shape
            crops.append(image[r // 4 : (3 * r + 3) // 4, c // 4 : (3 * c + 3) // 4])
        regions.append(np.stack(crops).astype(np.float32))
    threshold = otsu_threshold(np.concatenate([r.ravel() for r in regions]))
    areas = [int(np.count_nonzero(r > threshold)) for r in regions]
    candidates = range(1, len(phases))
    return min(candidates, key=lambda p: (areas[p], p))
