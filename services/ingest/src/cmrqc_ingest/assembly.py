"""Series assembly, the domain core: spooled files in, one volume per selected phase out.

:func:`assemble_series` reads the files of one complete series, applies the skip rules
(:mod:`cmrqc_ingest.rules`), sorts slices along the normal and checks the stack
(:mod:`cmrqc_ingest.geometry`), splits the cardiac phases and picks ED and ES
(:mod:`cmrqc_ingest.phases`), and decodes the pixels of the selected phases only. It needs
neither Kafka nor a network; the caller decides what to do with the result.

Volumes are (slices, rows, columns). Stored values are kept as uint16 when every frame has
RescaleSlope 1 and RescaleIntercept 0 and unsigned pixels; otherwise the rescale is applied
and the volume is float32.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from cmrqc_ingest.frames import (
    Frame,
    FrameError,
    InstanceHeader,
    InstanceRecord,
    PixelLoader,
    PixelLocation,
    read_instance_record,
)
from cmrqc_ingest.geometry import (
    GeometryError,
    SliceStack,
    build_stack,
    check_common_plane,
    group_slices,
    max_axis_alignment_deg,
)
from cmrqc_ingest.instance_ref import InstanceRef
from cmrqc_ingest.phases import CinePhase, PhaseError, has_timing, select_es, split_phases
from cmrqc_ingest.rules import (
    MIN_OBLIQUITY_DEG,
    check_cine,
    check_headers,
    check_oblique,
    check_slice_count,
)
from cmrqc_shared.events import CardiacPhase


class AssemblyError(Exception):
    """A series-level failure: the series is dead-lettered with ``reason`` and ``details``.

    ``message`` is built from UIDs and numbers only, never from attribute values that could
    identify the patient.
    """

    def __init__(self, reason: str, message: str, details: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.details = details or {}


@dataclass(frozen=True)
class AssembledPhase:
    """One published phase: its volume and the frames it was built from."""

    cardiac_phase: CardiacPhase
    index: int
    """Phase number in trigger-time order (0 = ED)."""
    volume: NDArray[np.uint16] | NDArray[np.float32]
    """(slices, rows, columns), slice k at the k-th position along the normal."""
    frames: tuple[Frame, ...]
    trigger_time_ms: float | None

    @property
    def frame_keys(self) -> tuple[str, ...]:
        return tuple(f.key for f in self.frames)

    @property
    def instance_count(self) -> int:
        return len({f.sop_instance_uid for f in self.frames})


@dataclass(frozen=True)
class AssembledSeries:
    """A short-axis cine series, assembled."""

    stack: SliceStack
    phases: tuple[AssembledPhase, ...]
    """ED first, then ES, then (when asked for) the other phases in time order."""
    phase_count: int
    """Cardiac phases in the series (published or not)."""


def instance_set_digest(sop_instance_uids: Sequence[str]) -> str:
    """SHA-256 of the sorted, de-duplicated SOPInstanceUIDs (identifies an instance set)."""
    text = "\n".join(sorted(set(sop_instance_uids)))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def read_series(
    paths: Sequence[Path | InstanceRef],
    records: Mapping[Path | InstanceRef, InstanceRecord] | None = None,
) -> tuple[list[InstanceHeader], list[Frame], set[str]]:
    """Headers and frames of every instance, one per SOPInstanceUID, plus identifiers to
    scrub.

    ``paths``: files or spool log records (``InstanceRef``). ``records``: headers already
    read (``frames.read_instance_record``) by path or record; the others are read here.

    Raises:
        AssemblyError: a file cannot be read or lacks geometry.
    """
    series = _read_series(paths, records or {})
    return series.headers, series.frames, series.identifiers


@dataclass
class _SeriesFiles:
    headers: list[InstanceHeader]
    frames: list[Frame]
    identifiers: set[str]
    pixels: dict[InstanceRef, PixelLocation]
    """Pixel data locations of the instances that have one (see ``frames.PixelLocation``)."""


def _read_series(
    paths: Sequence[Path | InstanceRef], records: Mapping[Path | InstanceRef, InstanceRecord]
) -> _SeriesFiles:
    headers: list[InstanceHeader] = []
    frames: list[Frame] = []
    identifiers: set[str] = set()
    pixels: dict[InstanceRef, PixelLocation] = {}
    seen: set[str] = set()
    known = {InstanceRef.of(key): record for key, record in records.items()}
    refs = sorted({InstanceRef.of(p) for p in paths}, key=lambda r: (str(r.path), r.offset))
    for path in refs:
        try:
            record = known.get(path) or read_instance_record(path)
        except FrameError as error:
            raise AssemblyError(error.reason, error.message, {"file": path.name}) from None
        except Exception as error:  # a spooled instance pydicom can no longer parse
            raise AssemblyError(
                "unreadable-instance",
                f"cannot read a spooled instance ({type(error).__name__})",
                {"file": path.name},
            ) from None
        identifiers.update(record.identifiers)
        header = record.header
        if header.sop_instance_uid in seen:
            continue
        seen.add(header.sop_instance_uid)
        headers.append(header)
        frames.extend(record.frames)
        if record.pixels is not None:
            pixels[path] = record.pixels
    if not frames:
        raise AssemblyError("empty-series", "no frames in the series")
    return _SeriesFiles(headers, frames, identifiers, pixels)


def assemble_series(
    paths: Sequence[Path | InstanceRef],
    *,
    min_slices: int = 3,
    publish_all_phases: bool = False,
    min_obliquity_deg: float = MIN_OBLIQUITY_DEG,
    records: Mapping[Path | InstanceRef, InstanceRecord] | None = None,
) -> AssembledSeries:
    """Assemble the spooled files of one series into ED/ES volumes.

    Args:
        paths: the series' Part 10 files or spool log records (any order; duplicates by
            SOPInstanceUID ignored).
        min_slices: fewer slice positions is not a short-axis stack (skipped).
        publish_all_phases: also return the phases other than ED and ES.
        min_obliquity_deg: see rule ``not-oblique``.
        records: headers of some of ``paths`` already read (``read_instance_record``, e.g.
            while the series was arriving); the rest are read here. Same result either way.

    Raises:
        SeriesSkipped: the series is not short-axis cine MR (a rule in ``rules`` matched).
        AssemblyError: the series cannot be assembled (inconsistent geometry or phases,
            undecodable pixels, unreadable files).
    """
    files = _read_series(paths, records or {})
    headers, frames = files.headers, files.frames
    check_headers(headers)
    try:
        normal = check_common_plane(frames)
        groups = group_slices(frames, normal)
    except GeometryError as error:
        raise AssemblyError(error.reason, error.message) from None
    check_slice_count(len(groups), min_slices)
    check_cine(has_timing(frames), max(len(g) for g in groups))
    check_oblique(max_axis_alignment_deg(normal), min_obliquity_deg)
    try:
        stack = build_stack(groups, normal)
        phases = split_phases(stack.slices)
    except (GeometryError, PhaseError) as error:
        raise AssemblyError(error.reason, error.message) from None

    loader = PixelLoader(files.pixels)
    try:
        es = select_es(phases, lambda f: _rescaled(loader.frame(f), f))
        selected = [(CardiacPhase.ED, phases[0]), (CardiacPhase.ES, phases[es])]
        if publish_all_phases:
            selected += [(CardiacPhase.OTHER, p) for p in phases if p.index not in (0, es)]
        assembled = tuple(_build_phase(name, phase, loader) for name, phase in selected)
    except FrameError as error:
        raise AssemblyError(error.reason, error.message) from None
    except PhaseError as error:
        raise AssemblyError(error.reason, error.message) from None
    return AssembledSeries(stack=stack, phases=assembled, phase_count=len(phases))


def _rescaled(pixels: NDArray, frame: Frame) -> NDArray[np.float32]:
    return pixels.astype(np.float32) * np.float32(frame.rescale_slope) + np.float32(
        frame.rescale_intercept
    )


def _build_phase(name: CardiacPhase, phase: CinePhase, loader: PixelLoader) -> AssembledPhase:
    planes = [loader.frame(f) for f in phase.frames]
    identity = all(f.rescale_slope == 1.0 and f.rescale_intercept == 0.0 for f in phase.frames)
    unsigned = all(p.dtype.kind in "ub" and p.dtype.itemsize <= 2 for p in planes)
    volume: NDArray[np.uint16] | NDArray[np.float32]
    if identity and unsigned:
        volume = np.stack(planes).astype(np.uint16, copy=False)
    else:
        volume = np.stack([_rescaled(p, f) for p, f in zip(planes, phase.frames, strict=True)])
    return AssembledPhase(
        cardiac_phase=name,
        index=phase.index,
        volume=volume,
        frames=phase.frames,
        trigger_time_ms=phase.trigger_time_ms,
    )
