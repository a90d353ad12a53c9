"""Skip rules: which series are not short-axis cine MR, and are left alone.

A hospital's PACS forwards whole studies, so most series that reach us are not what we
segment. They are acknowledged (C-STORE success, STOW-RS stored), then skipped: the reason is
logged with the SeriesInstanceUID and counted in ``cmrqc_ingest_series_skipped_total{reason}``.
Skipping is not an error: no dead letter. The rules, in the order they are applied:

1. ``not-mr`` — the SOP class is neither MR Image Storage nor Enhanced MR Image Storage
   (CT, secondary capture, SR, ...: decided on arrival, such instances are never spooled), or
   the series' Modality is not ``MR``.
2. ``localizer`` — ImageType contains ``LOCALIZER`` or ``SCOUT``, or SeriesDescription /
   ProtocolName names a localiser (localizer, localiser, loc, scout, survey, pilot, tri-pilot,
   3-plane).
3. ``long-axis-view`` — SeriesDescription / ProtocolName names a long-axis view (LAX, 2CH, 3CH,
   4CH, 2-chamber, long axis, LVOT, RVOT, VLA, HLA).
4. ``too-few-slices`` — fewer than ``min_slices`` (default 3) distinct slice positions: single
   images, single-slice cines (long-axis views usually are), two-slice tests.
5. ``not-cine`` — no cardiac timing (neither TriggerTime / trigger delay nor a temporal
   position), or only one frame per slice position: a static stack (LGE, T1/T2 maps, ...).
6. ``not-oblique`` — the slice normal lies within 20 degrees of a patient axis: an axial,
   coronal or sagittal stack, not a short-axis plan (whose normal follows the LV long axis,
   roughly 30-60 degrees from every axis).

What is *not* a skip but a failure (a ``DeadLetter`` with the reason, files kept under
``spool/dead``): a series that passes these rules but whose frames do not form one consistent
stack (non-parallel orientations, differing matrices or pixel spacings, uneven spacing from a
missing slice, slices with different phase counts, undecodable pixels).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from enum import StrEnum

from cmrqc_ingest.frames import InstanceHeader

#: A normal closer than this to a patient axis is an axial/coronal/sagittal stack, degrees.
MIN_OBLIQUITY_DEG = 20.0


class SkipReason(StrEnum):
    """Why a series is not assembled (the ``reason`` label of the skip counter)."""

    NOT_MR = "not-mr"
    LOCALIZER = "localizer"
    LONG_AXIS = "long-axis-view"
    TOO_FEW_SLICES = "too-few-slices"
    NOT_CINE = "not-cine"
    NOT_OBLIQUE = "not-oblique"


class SeriesSkipped(Exception):
    """The series is not short-axis cine MR; ``reason`` says which rule matched."""

    def __init__(self, reason: SkipReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


def _words(*alternatives: str) -> re.Pattern[str]:
    """Match any alternative as a whole token (not inside a longer word or number)."""
    return re.compile(r"(?<![a-z0-9])(?:" + "|".join(alternatives) + r")(?![a-z0-9])")


_LOCALIZER_TEXT = _words(
    r"locali[sz]er", r"loc", r"scout", r"survey", r"tri-?pilot", r"pilot", r"3-?plane"
)
_LONG_AXIS_TEXT = _words(
    r"lax",
    r"[234] ?-?ch",
    r"[234] ?-?chamber",
    r"long[ _-]?axis",
    r"lvot",
    r"rvot",
    r"vla",
    r"hla",
)
_LOCALIZER_IMAGE_TYPES = frozenset({"LOCALIZER", "SCOUT"})


def check_headers(headers: Sequence[InstanceHeader]) -> None:
    """Apply rules 1-3 to the instances' series-level attributes.

    Raises:
        SeriesSkipped: a rule matched.
    """
    modalities = {h.modality for h in headers}
    if modalities != {"MR"}:
        raise SeriesSkipped(SkipReason.NOT_MR, f"Modality {sorted(modalities)}")
    for header in headers:
        if _LOCALIZER_IMAGE_TYPES & set(header.image_type):
            raise SeriesSkipped(SkipReason.LOCALIZER, f"ImageType {list(header.image_type)}")
    texts = {f"{h.series_description} {h.protocol_name}".lower() for h in headers}
    for text in texts:
        if _LOCALIZER_TEXT.search(text):
            raise SeriesSkipped(SkipReason.LOCALIZER, "series description names a localiser")
        if _LONG_AXIS_TEXT.search(text):
            raise SeriesSkipped(SkipReason.LONG_AXIS, "series description names a long axis")


def check_slice_count(n_slices: int, min_slices: int) -> None:
    """Rule 4. Raises SeriesSkipped when there are too few slice positions."""
    if n_slices < min_slices:
        raise SeriesSkipped(
            SkipReason.TOO_FEW_SLICES, f"{n_slices} slice position(s), need {min_slices}"
        )


def check_cine(timed: bool, frames_per_slice: int) -> None:
    """Rule 5. Raises SeriesSkipped when the stack has no cardiac phases."""
    if not timed:
        raise SeriesSkipped(SkipReason.NOT_CINE, "no trigger time or temporal position")
    if frames_per_slice < 2:
        raise SeriesSkipped(SkipReason.NOT_CINE, "one frame per slice position")


def check_oblique(axis_angle_deg: float, min_angle_deg: float = MIN_OBLIQUITY_DEG) -> None:
    """Rule 6. Raises SeriesSkipped when the stack is (nearly) axial, coronal or sagittal."""
    if axis_angle_deg < min_angle_deg:
        raise SeriesSkipped(
            SkipReason.NOT_OBLIQUE,
            f"slice normal {axis_angle_deg:.1f} degrees from a patient axis",
        )
