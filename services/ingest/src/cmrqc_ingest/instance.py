"""Inspect one received DICOM instance: parse its header, validate it, summarise it.

Every entry point (C-STORE, STOW-RS, folder backfill, spool recovery) calls
:func:`inspect_instance` on the encoded bytes, so an instance is accepted or refused by the
same rules whichever way it came in. Only headers are read: the pixel data element is
deferred (its length is checked, its value never decoded here); decoding happens at
assembly time. Patient identifiers are never copied into :class:`InstanceInfo`.

A plain classic MR instance (native little endian, ASCII values) is read by the fast reader
of :mod:`cmrqc_ingest.fast_header`, which decodes only the attributes used here, at about a
sixth of pydicom's cost; anything else, and anything it would refuse, goes through pydicom.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any

from pydicom import config as pydicom_config
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    EnhancedMRImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    MRImageStorage,
    RLELossless,
)

from cmrqc_ingest.fast_header import FastHeader, read_fast_header
from cmrqc_ingest.status import StoreStatus

#: SOP classes whose series we assemble into volumes; any other class is skipped.
ASSEMBLED_SOP_CLASSES: frozenset[str] = frozenset({MRImageStorage, EnhancedMRImageStorage})

_NATIVE_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian)
_COMPRESSED_SYNTAXES = (
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
)

_PIXEL_DATA_TAG = 0x7FE00010
_UNDEFINED_LENGTH = 0xFFFFFFFF
#: Deferring values above this size keeps the pixel data out of header parsing.
_DEFER_SIZE = 4096


def decodable_transfer_syntaxes() -> tuple[UID, ...]:
    """Transfer syntaxes whose pixel data pydicom can decode with the installed plugins.

    Native (uncompressed) syntaxes first, preferred in that order; compressed ones only when
    a decoder plugin (pylibjpeg-libjpeg, -openjpeg, -rle, or pydicom's own RLE) is present.
    """
    available = [ts for ts in _COMPRESSED_SYNTAXES if _decoder_available(ts)]
    return (*_NATIVE_SYNTAXES, *available)


def _decoder_available(ts: UID) -> bool:
    try:
        return bool(get_decoder(ts).is_available)
    except NotImplementedError:
        return False


def quiet_value_validation() -> None:
    """Stop pydicom validating values as it reads them (process-wide).

    pydicom's default (WARN) logs each invalid value *with the value*; in a malformed
    instance an overlong UID swallows the elements after it, so the warning can carry a
    patient's name or ID into the logs. Our own checks decide what is acceptable and answer
    with a status; the warnings add nothing but the leak (and ~10% of the header parse).
    """
    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE


class InstanceRejected(Exception):
    """The instance cannot be accepted; ``status`` is the DICOM status to answer with."""

    def __init__(self, status: StoreStatus, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class InstanceLimits:
    """Size limits that protect memory and disk (see ``IngestSettings``)."""

    max_rows: int = 1024
    max_columns: int = 1024
    max_frames: int = 4096
    max_instance_bytes: int = 512 * 1024 * 1024
    max_series_instances: int = 10000


@dataclass(frozen=True)
class InstanceInfo:
    """What the series tracker needs to know about one accepted instance (no identifiers)."""

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    modality: str
    number_of_frames: int
    size_bytes: int
    received_at: datetime
    """When the instance arrived (UTC)."""
    expected_instances: int | None
    """Instances the whole series has, when the header says so reliably
    (ImagesInAcquisition, or 1 for a self-contained Enhanced MR cine)."""
    cardiac_number_of_images: int | None
    """CardiacNumberOfImages: phases per slice position, when present."""
    slice_position_key: str | None
    """ImagePositionPatient rounded to 0.01 mm (classic MR), to count slice positions."""

    @property
    def assembled(self) -> bool:
        """Whether the instance belongs to a SOP class whose series we assemble."""
        return self.sop_class_uid in ASSEMBLED_SOP_CLASSES


def inspect_instance(
    data: bytes,
    *,
    received_at: datetime,
    limits: InstanceLimits,
    affected_sop_class_uid: str | None = None,
    affected_sop_instance_uid: str | None = None,
    transfer_syntaxes: tuple[str, ...] | None = None,
) -> InstanceInfo:
    """Parse the header of a DICOM Part 10 byte string and validate it.

    Args:
        data: the instance as a Part 10 file (preamble, file meta, data set).
        received_at: arrival time (UTC).
        limits: size limits.
        affected_sop_class_uid, affected_sop_instance_uid: from the C-STORE request; the
            data set must carry the same values.
        transfer_syntaxes: accepted transfer syntaxes (default: every decodable one).

    Raises:
        InstanceRejected: with the DICOM status that names the failed check.
    """
    return inspect_instance_dataset(
        data,
        received_at=received_at,
        limits=limits,
        affected_sop_class_uid=affected_sop_class_uid,
        affected_sop_instance_uid=affected_sop_instance_uid,
        transfer_syntaxes=transfer_syntaxes,
    )[0]


def inspect_instance_dataset(
    data: bytes,
    *,
    received_at: datetime,
    limits: InstanceLimits,
    affected_sop_class_uid: str | None = None,
    affected_sop_instance_uid: str | None = None,
    transfer_syntaxes: tuple[str, ...] | None = None,
) -> tuple[InstanceInfo, Dataset | FastHeader]:
    """:func:`inspect_instance`, also returning the parsed header, so that nothing has to
    parse the same bytes again: a :class:`FastHeader` for a plain classic MR instance, else
    pydicom's data set (pixel data deferred; it refers to ``data``).

    A plain instance is read by :func:`~cmrqc_ingest.fast_header.read_fast_header`; if that
    gives up, or its values fail a check, pydicom parses the bytes and the checks run again,
    so every refusal comes from the general path.
    """
    if len(data) > limits.max_instance_bytes:
        # 0xA701 refused, out of resources: over the configured size limit
        raise InstanceRejected(
            StoreStatus.OUT_OF_RESOURCES_LIMIT,
            "instance-too-large",
            f"{len(data)} bytes exceed the limit of {limits.max_instance_bytes}",
        )
    check = partial(
        _summarise,
        size=len(data),
        received_at=received_at,
        limits=limits,
        affected_sop_class_uid=affected_sop_class_uid,
        affected_sop_instance_uid=affected_sop_instance_uid,
        transfer_syntaxes=transfer_syntaxes or decodable_transfer_syntaxes(),
    )
    fast = read_fast_header(data)
    if fast is not None:
        try:
            fast_info = check(
                fast,
                ts=fast.transfer_syntax,
                element_count=fast.element_count,
                pixel_element=fast.pixel_element,
            )
        except Exception:  # refused or odd: the general path decides, with its status
            pass
        else:
            return fast_info, fast
    try:
        ds = dcmread(io.BytesIO(data), defer_size=_DEFER_SIZE)
    except Exception as error:  # pydicom raises many types on malformed input
        # 0xC000 cannot understand: not a parseable DICOM file
        raise InstanceRejected(
            StoreStatus.CANNOT_UNDERSTAND,
            "unparseable",
            f"cannot parse the data set ({type(error).__name__})",
        ) from None
    try:
        meta = getattr(ds, "file_meta", None)
        pixel = ds.get_item(_PIXEL_DATA_TAG, keep_deferred=True)
        info = check(
            ds,
            ts=str(meta.get("TransferSyntaxUID", "") or "") if meta is not None else "",
            element_count=len(ds),
            pixel_element=(
                (int(getattr(pixel, "length", 0) or 0), getattr(pixel, "value_tell", None))
                if pixel is not None
                else None
            ),
        )
    except InstanceRejected:
        raise
    except Exception as error:  # a malformed value that pydicom fails to convert
        # 0xC000 cannot understand: an attribute value cannot be decoded
        raise InstanceRejected(
            StoreStatus.CANNOT_UNDERSTAND,
            "malformed-attribute",
            f"cannot decode an attribute value ({type(error).__name__})",
        ) from None
    return info, ds


def _summarise(
    ds: Dataset | FastHeader,
    *,
    ts: str,
    element_count: int,
    pixel_element: tuple[int, int | None] | None,
    size: int,
    received_at: datetime,
    limits: InstanceLimits,
    affected_sop_class_uid: str | None,
    affected_sop_instance_uid: str | None,
    transfer_syntaxes: tuple[str, ...],
) -> InstanceInfo:
    """Check and summarise a header; ``pixel_element`` is PixelData's (length, value
    offset), None when there is none."""
    if not ts or element_count == 0:
        # 0xC000 cannot understand: no file meta transfer syntax, or no data elements
        raise InstanceRejected(
            StoreStatus.CANNOT_UNDERSTAND, "unparseable", "no transfer syntax or no data set"
        )
    if ts not in transfer_syntaxes:
        # 0xC122 transfer syntax not supported (PS3.18); cannot occur over C-STORE, whose
        # presentation contexts only offer decodable syntaxes
        raise InstanceRejected(
            StoreStatus.TRANSFER_SYNTAX_NOT_SUPPORTED,
            "transfer-syntax-not-supported",
            f"transfer syntax {ts or '(none)'} cannot be decoded here",
        )
    sop_class = _required_uid(ds, "SOPClassUID")
    sop_instance = _required_uid(ds, "SOPInstanceUID")
    study = _required_uid(ds, "StudyInstanceUID")
    series = _required_uid(ds, "SeriesInstanceUID")
    if affected_sop_class_uid is not None and sop_class != affected_sop_class_uid:
        # 0xA900 data set does not match SOP class: the request named another class
        raise InstanceRejected(
            StoreStatus.DATASET_MISMATCH,
            "sop-class-mismatch",
            f"data set SOPClassUID {sop_class} differs from the request's {affected_sop_class_uid}",
        )
    if affected_sop_instance_uid is not None and sop_instance != affected_sop_instance_uid:
        # 0xA900 data set does not match SOP class: the request named another instance
        raise InstanceRejected(
            StoreStatus.DATASET_MISMATCH,
            "sop-instance-mismatch",
            "data set SOPInstanceUID differs from the request's",
        )
    modality = str(ds.get("Modality", "") or "").strip().upper()
    if sop_class not in ASSEMBLED_SOP_CLASSES:
        return InstanceInfo(
            sop_class_uid=sop_class,
            sop_instance_uid=sop_instance,
            study_instance_uid=study,
            series_instance_uid=series,
            transfer_syntax_uid=ts,
            modality=modality,
            number_of_frames=1,
            size_bytes=size,
            received_at=received_at,
            expected_instances=None,
            cardiac_number_of_images=None,
            slice_position_key=None,
        )

    rows = _required_int(ds, "Rows")
    cols = _required_int(ds, "Columns")
    bits = _required_int(ds, "BitsAllocated")
    samples = _optional_int(ds, "SamplesPerPixel") or 1
    frames = _optional_int(ds, "NumberOfFrames") or 1
    if rows > limits.max_rows or cols > limits.max_columns or frames > limits.max_frames:
        # 0xA701 refused, out of resources: dimensions over the configured limits
        raise InstanceRejected(
            StoreStatus.OUT_OF_RESOURCES_LIMIT,
            "dimensions-too-large",
            f"{frames} frame(s) of {rows}x{cols} exceed the limits "
            f"({limits.max_frames} of {limits.max_rows}x{limits.max_columns})",
        )
    if rows < 1 or cols < 1 or frames < 1:
        # 0xC001 cannot understand the pixel data: empty image
        raise InstanceRejected(
            StoreStatus.CANNOT_UNDERSTAND_PIXELS,
            "empty-image",
            f"{frames} frame(s) of {rows}x{cols}",
        )
    if bits not in (8, 16) or samples != 1:
        # 0xC001 cannot understand the pixel data: MR images are 8/16-bit monochrome
        raise InstanceRejected(
            StoreStatus.CANNOT_UNDERSTAND_PIXELS,
            "unsupported-pixel-layout",
            f"BitsAllocated {bits}, SamplesPerPixel {samples}",
        )
    _check_pixel_data(pixel_element, ts, rows * cols * frames * bits // 8, size)

    if sop_class == EnhancedMRImageStorage:
        if not isinstance(ds, Dataset):
            raise TypeError("Enhanced MR headers are read by pydicom")
        expected = _enhanced_expected_instances(ds, frames)
        cni = None
        position_key = None
    else:
        ipp = _required_floats(ds, "ImagePositionPatient", 3)
        _required_floats(ds, "ImageOrientationPatient", 6)
        spacing = _required_floats(ds, "PixelSpacing", 2)
        if min(spacing) <= 0:
            # 0xA900 data set does not match SOP class: PixelSpacing must be positive
            raise InstanceRejected(
                StoreStatus.DATASET_MISMATCH, "malformed-attribute", "PixelSpacing <= 0"
            )
        cni = _optional_int(ds, "CardiacNumberOfImages")
        cni = cni if cni is not None and 0 < cni <= limits.max_series_instances else None
        expected = _classic_expected_instances(ds, cni, limits.max_series_instances)
        position_key = ",".join(f"{v:.2f}" for v in ipp)
    return InstanceInfo(
        sop_class_uid=sop_class,
        sop_instance_uid=sop_instance,
        study_instance_uid=study,
        series_instance_uid=series,
        transfer_syntax_uid=ts,
        modality=modality,
        number_of_frames=frames,
        size_bytes=size,
        received_at=received_at,
        expected_instances=expected,
        cardiac_number_of_images=cni,
        slice_position_key=position_key,
    )


def _check_pixel_data(
    element: tuple[int, int | None] | None, ts: str, expected_bytes: int, stream_bytes: int
) -> None:
    if element is None:
        # 0xC001 cannot understand the pixel data: there is none
        raise InstanceRejected(
            StoreStatus.CANNOT_UNDERSTAND_PIXELS, "no-pixel-data", "PixelData is missing"
        )
    length, value_tell = element
    deflated = ts == DeflatedExplicitVRLittleEndian  # positions refer to the inflated stream
    if (
        not deflated
        and value_tell is not None
        and length != _UNDEFINED_LENGTH
        and value_tell + length > stream_bytes
    ):
        # 0xC001 cannot understand the pixel data: the stream ends inside it (truncated)
        raise InstanceRejected(
            StoreStatus.CANNOT_UNDERSTAND_PIXELS,
            "pixel-data-truncated",
            f"PixelData declares {length} bytes; the data set ends before them",
        )
    if ts in _NATIVE_SYNTAXES:
        if length == _UNDEFINED_LENGTH or length < expected_bytes:
            # 0xC001 cannot understand the pixel data: shorter than Rows x Columns x frames
            raise InstanceRejected(
                StoreStatus.CANNOT_UNDERSTAND_PIXELS,
                "pixel-data-length",
                f"PixelData has {length} bytes, the image needs {expected_bytes}",
            )
    elif length != _UNDEFINED_LENGTH:
        # 0xC001 cannot understand the pixel data: compressed data must be encapsulated
        raise InstanceRejected(
            StoreStatus.CANNOT_UNDERSTAND_PIXELS,
            "pixel-data-not-encapsulated",
            "compressed PixelData must have undefined length (encapsulated)",
        )


def _classic_expected_instances(
    ds: Dataset | FastHeader, cni: int | None, max_instances: int
) -> int | None:
    """ImagesInAcquisition, when it plausibly counts the whole cine series.

    Some scanners write the images of one slice's acquisition (= CardiacNumberOfImages)
    instead: then it is ignored, since trusting it would complete a series after one slice.
    """
    iia = _optional_int(ds, "ImagesInAcquisition")
    if iia is None or not 0 < iia <= max_instances:
        return None
    if cni is not None and (iia <= cni or iia % cni != 0):
        return None
    return iia


def _enhanced_expected_instances(ds: Dataset, frames: int) -> int | None:
    """1 when this Enhanced MR instance holds a whole stack (every position x every phase)."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if ds.get("SharedFunctionalGroupsSequence") is None or per_frame is None:
        # 0xA900 data set does not match SOP class: Enhanced MR needs functional groups
        raise InstanceRejected(
            StoreStatus.DATASET_MISMATCH,
            "missing-attribute",
            "Enhanced MR without Shared/PerFrameFunctionalGroupsSequence",
        )
    if len(per_frame) != frames:
        # 0xA900 data set does not match SOP class: one per-frame item per frame
        raise InstanceRejected(
            StoreStatus.DATASET_MISMATCH,
            "malformed-attribute",
            f"{len(per_frame)} per-frame items for {frames} frames",
        )
    positions: set[Any] = set()
    temporal: set[Any] = set()
    for item in per_frame:
        content = item.get("FrameContentSequence")
        if not content:
            return None
        positions.add(content[0].get("InStackPositionNumber"))
        temporal.add(content[0].get("TemporalPositionIndex"))
    if None in positions or None in temporal:
        return None
    return 1 if len(positions) * len(temporal) == frames else None


def _required_uid(ds: Dataset | FastHeader, keyword: str) -> str:
    value = str(ds.get(keyword, "") or "").strip().rstrip("\x00")
    if not value:
        # 0xA900 data set does not match SOP class: a Type 1 UID is missing
        raise InstanceRejected(
            StoreStatus.DATASET_MISMATCH, "missing-attribute", f"{keyword} is missing or empty"
        )
    if len(value) > 64:
        # 0xA900 data set does not match SOP class: a UID is at most 64 characters
        raise InstanceRejected(
            StoreStatus.DATASET_MISMATCH, "malformed-attribute", f"{keyword} is too long"
        )
    return value


def _optional_int(ds: Dataset | FastHeader, keyword: str) -> int | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _required_int(ds: Dataset | FastHeader, keyword: str) -> int:
    value = ds.get(keyword)
    try:
        number = int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        # 0xA900 data set does not match SOP class: a Type 1 integer is missing or malformed
        raise InstanceRejected(
            StoreStatus.DATASET_MISMATCH,
            "missing-attribute",
            f"{keyword} is missing or not an integer",
        ) from None
    return number


def _required_floats(ds: Dataset | FastHeader, keyword: str, count: int) -> list[float]:
    value = ds.get(keyword)
    try:
        numbers = [float(v) for v in value]  # type: ignore[union-attr]
    except (TypeError, ValueError):
        numbers = []
    if len(numbers) != count or not all(math.isfinite(v) for v in numbers):
        # 0xA900 data set does not match SOP class: Image Plane attributes are Type 1
        raise InstanceRejected(
            StoreStatus.DATASET_MISMATCH,
            "missing-attribute",
            f"{keyword} is missing or does not hold {count} numbers",
        )
    return numbers
