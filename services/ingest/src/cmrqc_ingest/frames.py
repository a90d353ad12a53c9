"""Frames: one 2D image each, with its geometry and timing, from classic or Enhanced MR.

A classic MR Image Storage instance is one frame; an Enhanced MR instance holds many, with
geometry and timing in its functional groups (per-frame first, then shared). Everything
downstream (slice sorting, phase split, volume building) works on :class:`Frame` records,
so both kinds assemble the same way. Headers are read without decoding pixel data; pixels
are decoded later, only for the frames a published volume needs (:class:`PixelLoader`).

Each file is parsed once: reading the header also notes where an uncompressed instance's
pixel data lies in the file (:class:`PixelLocation`), so decoding it later reads just those
bytes and hands them to pydicom's decoder with the same options ``Dataset.pixel_array``
would use, instead of parsing the whole data set a second time. Compressed, deflated or
big-endian data, and anything unusual, are decoded the general way (``dcmread`` and
``pixel_array``).
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.utils import as_pixel_options
from pydicom.uid import EnhancedMRImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from cmrqc_ingest.fast_header import FastHeader, read_fast_header
from cmrqc_ingest.instance_ref import InstanceRef

#: Transfer syntaxes whose pixel data is a plain byte run in the file (PixelLocation).
_LOCATABLE_SYNTAXES = frozenset({ExplicitVRLittleEndian, ImplicitVRLittleEndian})
_PIXEL_DATA_TAG = 0x7FE00010
_OTHER_PIXEL_TAGS = (0x7FE00008, 0x7FE00009)  # FloatPixelData, DoubleFloatPixelData
_UNDEFINED_LENGTH = 0xFFFFFFFF
#: Values larger than this are skipped, not copied, while parsing a header (as at receive).
_DEFER_SIZE = 4096


class FrameError(Exception):
    """A frame lacks (or has malformed) geometry or pixel attributes."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Frame:
    """One 2D image of a series (all lengths in mm, times in ms)."""

    instance: InstanceRef
    """Where the instance it belongs to lies (file or spool log record)."""
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


@dataclass(frozen=True)
class PixelLocation:
    """Where an uncompressed instance's pixel data lies in its file, and how to decode it."""

    offset: int
    """Byte offset of the PixelData value in the file."""
    length: int
    """Length of the PixelData value, bytes."""
    transfer_syntax_uid: str
    options: tuple[tuple[str, Any], ...]
    """Decoder options: the Image Pixel elements, as ``Dataset.pixel_array`` passes them."""

    def decode(self, instance: Path | InstanceRef) -> NDArray[Any]:
        """The pixel array of ``instance``, exactly as ``dcmread(...).pixel_array``.

        Raises:
            Exception: pydicom's errors on data that does not match its description, or
                EOFError for an instance cut short inside the pixel data.
        """
        ref = InstanceRef.of(instance)
        with open(ref.path, "rb") as handle:
            buffer = ref.read_range(handle, self.offset, self.length)
        array, _ = get_decoder(self.transfer_syntax_uid).as_array(
            buffer, validate=True, raw=False, decoding_plugin="", **dict(self.options)
        )
        return np.asarray(array)


def locate_pixel_data(ds: Dataset, file_size: int) -> PixelLocation | None:
    """The :class:`PixelLocation` of a data set parsed from a whole Part 10 file, if simple.

    Only native little-endian data with a defined length that lies wholly inside the file is
    located; anything else (compressed, deflated, big endian, float pixel data, a truncated
    file, an unusual pixel description) returns None and is decoded the general way, which
    raises the same errors as before.
    """
    meta = getattr(ds, "file_meta", None)
    ts = str(meta.get("TransferSyntaxUID", "") or "") if meta is not None else ""
    if ts not in _LOCATABLE_SYNTAXES:
        return None
    element = ds.get_item(_PIXEL_DATA_TAG, keep_deferred=True)
    if not isinstance(element, RawDataElement) or any(t in ds for t in _OTHER_PIXEL_TAGS):
        return None
    length, offset = int(element.length), element.value_tell
    if (
        not element.is_little_endian
        or length == _UNDEFINED_LENGTH
        or offset is None
        or offset + length > file_size
    ):
        return None
    try:
        options = as_pixel_options(ds)
    except Exception:  # a malformed Image Pixel value: let pixel_array report it
        return None
    options["pixel_keyword"] = "PixelData"
    return PixelLocation(
        offset=int(offset),
        length=length,
        transfer_syntax_uid=ts,
        options=tuple(sorted(options.items())),
    )


@dataclass(frozen=True)
class InstanceRecord:
    """What one file's header gives: see :func:`read_instance`."""

    header: InstanceHeader
    frames: list[Frame]
    identifiers: list[str]
    pixels: PixelLocation | None
    """Where the pixel data lies, when it can be decoded without re-parsing the file."""


def read_instance(path: Path | InstanceRef) -> tuple[InstanceHeader, list[Frame], list[str]]:
    """Read one spooled file's header: (series attributes, frames, patient identifiers).

    The identifiers (PatientName, PatientID, PatientBirthDate, OtherPatientIDs) are
    returned only so messages can be scrubbed of them; never log or publish them.

    Raises:
        FrameError: geometry or pixel attributes missing or malformed.
        Exception: pydicom's errors on a file that cannot be parsed any more.
    """
    record = read_instance_record(path)
    return record.header, record.frames, record.identifiers


def read_instance_record(path: Path | InstanceRef) -> InstanceRecord:
    """:func:`read_instance`, plus where the pixel data lies (:func:`locate_pixel_data`).

    The file is read once into memory and parsed whole, pixel data skipped rather than
    copied (as ``inspect_instance`` does at receive time). Should that parse fail on
    something after the pixel data, the header is parsed up to the pixel data only, as
    before, and the pixels are left to the general decoder to judge.

    Raises:
        FrameError: geometry or pixel attributes missing or malformed.
        Exception: pydicom's errors on a file that cannot be parsed any more.
    """
    instance = InstanceRef.of(path)
    data = instance.read_bytes()
    fast = read_fast_header(data)
    if fast is not None:
        return _record(fast, instance, _locate_fast_pixel_data(fast, len(data)))
    pixels: PixelLocation | None
    try:
        ds = dcmread(io.BytesIO(data), defer_size=_DEFER_SIZE)
        pixels = locate_pixel_data(ds, len(data))
    except Exception:  # e.g. a malformed element after the pixel data
        ds = dcmread(io.BytesIO(data), stop_before_pixels=True)
        pixels = None
    return _record(ds, instance, pixels)


def record_from_dataset(
    ds: Dataset | FastHeader, file_size: int, path: Path | InstanceRef
) -> InstanceRecord:
    """:func:`read_instance_record` from the header ``inspect_instance`` parsed at receive
    time out of the same bytes that were spooled to ``path`` (no second parse).

    Raises:
        FrameError: geometry or pixel attributes missing or malformed.
    """
    if isinstance(ds, FastHeader):
        return _record(ds, InstanceRef.of(path), _locate_fast_pixel_data(ds, file_size))
    return _record(ds, InstanceRef.of(path), locate_pixel_data(ds, file_size))


def _locate_fast_pixel_data(header: FastHeader, file_size: int) -> PixelLocation | None:
    """:func:`locate_pixel_data` for a header read by the fast reader."""
    offset, length = header.pixel_offset, header.pixel_length
    if offset is None or length is None or offset + length > file_size:
        return None
    options = header.pixel_options()
    options["pixel_keyword"] = "PixelData"
    return PixelLocation(
        offset=offset,
        length=length,
        transfer_syntax_uid=header.transfer_syntax,
        options=tuple(sorted(options.items())),
    )


def _record(
    ds: Dataset | FastHeader, path: InstanceRef, pixels: PixelLocation | None
) -> InstanceRecord:
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
        if not isinstance(ds, Dataset):
            raise TypeError("Enhanced MR headers are read by pydicom")
        frames = _enhanced_frames(ds, path, header.sop_instance_uid)
    else:
        frames = [_classic_frame(ds, path, header.sop_instance_uid)]
    return InstanceRecord(header=header, frames=frames, identifiers=identifiers, pixels=pixels)


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


def _classic_frame(ds: Dataset | FastHeader, path: InstanceRef, sop_uid: str) -> Frame:
    frames = _optional_int(ds.get("NumberOfFrames")) or 1
    if frames != 1:
        raise FrameError(
            "unsupported-multiframe", f"MR Image Storage instance with {frames} frames"
        )
    spacing = _floats(ds.get("PixelSpacing"), 2, "PixelSpacing")
    return Frame(
        instance=path,
        sop_instance_uid=sop_uid,
        frame_index=None,
        position=_floats(ds.get("ImagePositionPatient"), 3, "ImagePositionPatient"),  # type: ignore[arg-type]
        orientation=_floats(ds.get("ImageOrientationPatient"), 6, "ImageOrientationPatient"),  # type: ignore[arg-type]
        pixel_spacing=(spacing[0], spacing[1]),
        rows=int(ds.get("Rows")),
        columns=int(ds.get("Columns")),
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


def _enhanced_frames(ds: Dataset, path: InstanceRef, sop_uid: str) -> list[Frame]:
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
                instance=path,
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

    A file with a known :class:`PixelLocation` is decoded from just its pixel bytes; any
    other goes through pydicom's pixel pipeline with the installed pylibjpeg plugins, so
    every transfer syntax the SCP accepts decodes here.
    """

    def __init__(self, locations: Mapping[InstanceRef, PixelLocation] | None = None) -> None:
        self._locations: Mapping[InstanceRef, PixelLocation] = locations or {}
        self._instance: InstanceRef | None = None
        self._array: NDArray[Any] | None = None

    def frame(self, frame: Frame) -> NDArray[Any]:
        """The stored pixel values of ``frame`` as a (rows, columns) array.

        Raises:
            FrameError: the pixel data cannot be decoded or has the wrong shape.
        """
        if frame.instance != self._instance:
            self._array = None
            location = self._locations.get(frame.instance)
            try:
                if location is not None:
                    array = location.decode(frame.instance)
                else:
                    array = np.asarray(dcmread(frame.instance.open()).pixel_array)
            except Exception as error:  # decoders raise many types on corrupt data
                raise FrameError(
                    "undecodable-pixels",
                    f"cannot decode the pixel data of {frame.sop_instance_uid} "
                    f"({type(error).__name__})",
                ) from None
            self._instance, self._array = frame.instance, array
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
