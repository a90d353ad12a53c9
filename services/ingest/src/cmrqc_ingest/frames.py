"""Frames: one 2D image each, with its geometry and timing, from classic or Enhanced MR.

A classic MR Image Storage instance is one frame; an Enhanced MR instance holds many, with
geometry and timing in its functional groups (per-frame first, then shared). Everything
downstream (slice sorting, phase split, volume building) works on :class:`Frame` records,
so both kinds assemble the same way. Headers are read without pixel data; pixels are
decoded later, only for the frames a published volume needs (:class:`PixelLoader`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import EnhancedMRImageStorage


class FrameError(Exception):
    """A frame lacks (or has malformed) geometry or pixel attributes."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Frame:
    """One 2D image of a series (all lengths in mm, times in ms)."""

    path: Path
    sop_instance_uid: str
    frame_index: int | None
    """0-based frame number inside a multi-frame instance; None for single-frame ones."""
    position: tuple[float, float, float]
    """ImagePositionPatient: centre of the first transmitted pixel, LPS mm."""
    orientation: tuple[float, float, float, float, float, float]
    """ImageOrientationPatient: row cosine (direction of increasing column), column cosine."""
    pixel_spacing: tuple[float, float]
    """PixelSpacing: (row spacing, column spacing), mm."""
    rows: int
    columns: int
    slice_thickness: float | None
    trigger_time_ms: float | None
    """TriggerTime (classic) or NominalCardiacTriggerDelayTime (Enhanced MR)."""
    temporal_index: int | None
    """TemporalPositionIdentifier (classic) or TemporalPositionIndex (Enhanced MR)."""
    instance_number: int | None
    rescale_slope: float
    rescale_intercept: float

    @property
    def key(self) -> str:
        """Identifies the frame: the SOPInstanceUID, with ``#n`` for multi-frame instances."""
        if self.frame_index is None:
            return self.sop_instance_uid
        return f"{self.sop_instance_uid}#{self.frame_index}"


@dataclass(frozen=True)
class InstanceHeader:
    """Series-level attributes of one instance, for the skip rules (no identifiers)."""

    sop_class_uid: str
    sop_instance_uid: str
    modality: str
    image_type: tuple[str, ...]
    series_description: str
    protocol_name: str


def read_instance(path: Path) -> tuple[InstanceHeader, list[Frame], list[str]]:
    """Read one spooled file's header: (series attributes, frames, patient identifiers).

    The identifiers (PatientName, PatientID, PatientBirthDate, OtherPatientIDs) are
    returned only so messages can be scrubbed of them; never log or publish them.

    Raises:
        FrameError: geometry or pixel attributes missing or malformed.
        Exception: pydicom's errors on a file that cannot be parsed any more.
    """
    ds = dcmread(path, stop_before_pixels=True)
    header = InstanceHeader(
        sop_class_uid=str(ds.get("SOPClassUID", "")),
        sop_instance_uid=str(ds.get("SOPInstanceUID", "")),
        modality=str(ds.get("Modality", "") or "").strip().upper(),
        image_type=_strings(ds.get("ImageType")),
        series_description=str(ds.get("SeriesDescription", "") or ""),
        protocol_name=str(ds.get("ProtocolName", "") or ""),
    )
    identifiers = [
        str(v)
        for v in (
            ds.get("PatientName"),
            ds.get("PatientID"),
            ds.get("PatientBirthDate"),
            ds.get("OtherPatientIDs"),
        )
        if v not in (None, "")
    ]
    if header.sop_class_uid == EnhancedMRImageStorage:
        frames = _enhanced_frames(ds, path, header.sop_instance_uid)
    else:
        frames = [_classic_frame(ds, path, header.sop_instance_uid)]
    return header, frames, identifiers


def _strings(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(v.strip().upper() for v in value.split("\\"))
    return tuple(str(v).strip().upper() for v in value)


def _floats(value: Any, count: int, name: str) -> tuple[float, ...]:
    try:
        numbers = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        numbers = ()
    if len(numbers) != count or not all(math.isfinite(v) for v in numbers):
        raise FrameError("missing-geometry", f"{name} is missing or does not hold {count} numbers")
    return numbers


def _optional_float(value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _optional_int(value: Any) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _classic_frame(ds: Dataset, path: Path, sop_uid: str) -> Frame:
    frames = _optional_int(ds.get("NumberOfFrames")) or 1
    if frames != 1:
        raise FrameError(
            "unsupported-multiframe", f"MR Image Storage instance with {frames} frames"
        )
    spacing = _floats(ds.get("PixelSpacing"), 2, "PixelSpacing")
    return Frame(
        path=path,
        sop_instance_uid=sop_uid,
        frame_index=None,
        position=_floats(ds.get("ImagePositionPatient"), 3, "ImagePositionPatient"),  # type: ignore[arg-type]
        orientation=_floats(ds.get("ImageOrientationPatient"), 6, "ImageOrientationPatient"),  # type: ignore[arg-type]
        pixel_spacing=(spacing[0], spacing[1]),
        rows=int(ds.Rows),
        columns=int(ds.Columns),
        slice_thickness=_optional_float(ds.get("SliceThickness")),
        trigger_time_ms=_optional_float(ds.get("TriggerTime")),
        temporal_index=_optional_int(ds.get("TemporalPositionIdentifier")),
        instance_number=_optional_int(ds.get("InstanceNumber")),
        rescale_slope=_optional_float(ds.get("RescaleSlope")) or 1.0,
        rescale_intercept=_optional_float(ds.get("RescaleIntercept")) or 0.0,
    )


def _group(item: Dataset | None, sequence: str) -> Dataset | None:
    """The first item of functional group ``sequence`` in ``item``, if present."""
    if item is None:
        return None
    seq = item.get(sequence)
    if not seq:
        return None
    first = seq[0]
    return first if isinstance(first, Dataset) else None


def _lookup(per: Dataset | None, shared: Dataset | None, sequence: str, keyword: str) -> Any:
    """An attribute from a functional group: the per-frame item first, then the shared one."""
    for item in (per, shared):
        group = _group(item, sequence)
        if group is not None and keyword in group:
            return group.get(keyword)
    return None


def _enhanced_frames(ds: Dataset, path: Path, sop_uid: str) -> list[Frame]:
    shared_seq = ds.get("SharedFunctionalGroupsSequence")
    shared = shared_seq[0] if shared_seq else None
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    rows, cols = int(ds.Rows), int(ds.Columns)
    top_slope = _optional_float(ds.get("RescaleSlope"))
    top_intercept = _optional_float(ds.get("RescaleIntercept"))
    frames = []
    for index, per in enumerate(per_frame):
        spacing = _floats(
            _lookup(per, shared, "PixelMeasuresSequence", "PixelSpacing"), 2, "PixelSpacing"
        )
        trigger = _optional_float(
            _lookup(per, shared, "CardiacSynchronizationSequence", "NominalCardiacTriggerDelayTime")
        )
        if trigger is None:
            trigger = _optional_float(
                _lookup(
                    per, shared, "CardiacSynchronizationSequence", "ActualCardiacTriggerDelayTime"
                )
            )
        slope = _optional_float(
            _lookup(per, shared, "PixelValueTransformationSequence", "RescaleSlope")
        )
        intercept = _optional_float(
            _lookup(per, shared, "PixelValueTransformationSequence", "RescaleIntercept")
        )
        frames.append(
            Frame(
                path=path,
                sop_instance_uid=sop_uid,
                frame_index=index,
                position=_floats(  # type: ignore[arg-type]
                    _lookup(per, shared, "PlanePositionSequence", "ImagePositionPatient"),
                    3,
                    "ImagePositionPatient",
                ),
                orientation=_floats(  # type: ignore[arg-type]
                    _lookup(per, shared, "PlaneOrientationSequence", "ImageOrientationPatient"),
                    6,
                    "ImageOrientationPatient",
                ),
                pixel_spacing=(spacing[0], spacing[1]),
                rows=rows,
                columns=cols,
                slice_thickness=_optional_float(
                    _lookup(per, shared, "PixelMeasuresSequence", "SliceThickness")
                ),
                trigger_time_ms=trigger,
                temporal_index=_optional_int(
                    _lookup(per, shared, "FrameContentSequence", "TemporalPositionIndex")
                ),
                instance_number=index + 1,
                rescale_slope=slope if slope is not None else (top_slope or 1.0),
                rescale_intercept=(intercept if intercept is not None else (top_intercept or 0.0)),
            )
        )
    if not frames:
        raise FrameError("missing-geometry", "Enhanced MR instance without per-frame groups")
    return frames


class PixelLoader:
    """Decodes pixel data on demand, one file at a time, caching the file being read.

    Decoding uses pydicom's pixel pipeline with the installed pylibjpeg plugins, so every
    transfer syntax the SCP accepts decodes here.
    """

    def __init__(self) -> None:
        self._path: Path | None = None
        self._array: NDArray[Any] | None = None

    def frame(self, frame: Frame) -> NDArray[Any]:
        """The stored pixel values of ``frame`` as a (rows, columns) array.

        Raises:
            FrameError: the pixel data cannot be decoded or has the wrong shape.
        """
        if frame.path != self._path:
            self._array = None
            try:
                ds = dcmread(frame.path)
                array = np.asarray(ds.pixel_array)
            except Exception as error:  # decoders raise many types on corrupt data
                raise FrameError(
                    "undecodable-pixels",
                    f"cannot decode the pixel data of {frame.sop_instance_uid} "
                    f"({type(error).__name__})",
                ) from None
            self._path, self._array = frame.path, array
        cached = self._array
        if cached is None:
            raise FrameError("undecodable-pixels", f"no pixels decoded for {frame.key}")
        array = cached
        if frame.frame_index is not None and array.ndim == 3:
            array = array[frame.frame_index]
        if array.shape != (frame.rows, frame.columns):
            raise FrameError(
                "undecodable-pixels",
                f"decoded frame of {frame.key} is {array.shape}, "
                f"expected {(frame.rows, frame.columns)}",
            )
        return array
