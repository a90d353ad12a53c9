"""The fast header reader gives what pydicom gives, or gives up.

For every input, ``inspect_instance`` (with the fast reader) and the general path (pydicom
only) must agree: the same :class:`InstanceInfo` and :class:`InstanceRecord` for an accepted
instance, the same status and reason for a refused one. Corpora: synthetic studies in
explicit and implicit VR, hand-made value edge cases (padding, signs, exponents, empty and
multiple values, non-ASCII text, wrong VRs, nested sequences, private sequences), pydicom's
bundled test files, and 1,500 fuzz mutants. Each corpus also checks that the fast reader
was taken where it should be, so that agreement is not won by always giving up.
"""

from __future__ import annotations

import io
import random
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pydicom.data
import pytest
from ingest_testing import SEED0, mutate_body, pydicom_mutant
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

import cmrqc_ingest.frames as frames_module
import cmrqc_ingest.instance as instance_module
from cmrqc_ingest.fast_header import FastHeader, read_fast_header
from cmrqc_ingest.frames import FrameError, read_instance_record, record_from_dataset
from cmrqc_ingest.instance import InstanceLimits, InstanceRejected, inspect_instance_dataset

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

RECEIVED = datetime(2026, 1, 1, tzinfo=UTC)
_LONG_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}


@contextmanager
def _general_path() -> Iterator[None]:
    """Both modules read headers with pydicom only while inside."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(instance_module, "read_fast_header", lambda data: None)
        patch.setattr(frames_module, "read_fast_header", lambda data: None)
        yield


def _outcome(data: bytes, path: Path) -> tuple[Any, ...]:
    """What ingest makes of ``data`` (spooled at ``path``): refusal, or info and records."""
    try:
        info, header = inspect_instance_dataset(data, received_at=RECEIVED, limits=InstanceLimits())
    except InstanceRejected as rejected:
        return ("refused", rejected.status, rejected.reason)
    path.write_bytes(data)
    records = []
    for read in (
        lambda: record_from_dataset(header, len(data), path),
        lambda: read_instance_record(path),
    ):
        try:
            records.append(read())
        except FrameError as error:
            records.append(("frame-error", error.reason))
    return ("accepted", info, *records)


def _compare(data: bytes, tmp_path: Path) -> bool:
    """Assert both paths agree on ``data``; True when the fast reader took it."""
    took_fast = read_fast_header(data) is not None
    fast = _outcome(data, tmp_path / "instance.dcm")
    with _general_path():
        general = _outcome(data, tmp_path / "instance.dcm")
    assert fast == general
    return took_fast


def _encode(ds: Dataset, *, implicit: bool = False) -> bytes:
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True, implicit_vr=implicit, little_endian=True)
    return buffer.getvalue()


def _with_raw_value(data: bytes, tag: int, raw: bytes, vr: str | None = None) -> bytes:
    """``data`` with the value of ``tag`` replaced by exactly ``raw`` (and, in explicit VR,
    its VR by ``vr``); the element must be present."""
    ds = dcmread(io.BytesIO(data), defer_size=4096)
    element = ds.get_item(tag)
    implicit = element.is_implicit_VR
    header = 8 if implicit or element.VR not in _LONG_VRS else 12
    start, end = element.value_tell - header, element.value_tell + element.length
    encoded = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
    if implicit:
        encoded += struct.pack("<I", len(raw))
    else:
        new_vr = vr or element.VR
        encoded += new_vr.encode()
        if new_vr in _LONG_VRS:
            encoded += struct.pack("<HI", 0, len(raw))
        else:
            encoded += struct.pack("<H", len(raw))
    return data[:start] + encoded + raw + data[end:]


@pytest.fixture(scope="module")
def plain_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    from ingest_testing import SMALL

    from cmrqc_shared.synth import render_study, write_dicom_series

    folder = tmp_path_factory.mktemp("plain")
    paths = write_dicom_series(render_study(SEED0 + 40, SMALL), folder / "a")
    paths += write_dicom_series(
        render_study(SEED0 + 41, SMALL.__class__(matrix_range=(64, 80), n_slices_range=(4, 5))),
        folder / "b",
    )
    return paths


def test_plain_synthetic_instances_are_read_fast_and_agree_in_both_vr_encodings(
    plain_files: list[Path], tmp_path: Path
) -> None:
    for path in plain_files:
        explicit = path.read_bytes()
        implicit = _encode(dcmread(path), implicit=True)
        assert _compare(explicit, tmp_path), f"{path.name}: explicit VR not read fast"
        assert _compare(implicit, tmp_path), f"{path.name}: implicit VR not read fast"
        header = read_fast_header(explicit)
        assert isinstance(header, FastHeader)
        assert header.get("PatientName"), "identifiers must be read, to be scrubbed"


EDGE_VALUES: list[tuple[int, bytes, str | None]] = [
    (0x00200032, b" -12.5\\3.0 \\4 ", None),  # ImagePositionPatient, padded parts
    (0x00200032, b"-1.2e1\\+3\\.5", None),
    (0x00200032, b"1\\2", None),  # two numbers: refused
    (0x00200032, b"nan\\0\\0", None),
    (0x00200032, b"1.5\\\\3", None),  # an empty part
    (0x00200032, b"1,5\\2\\3", None),
    (0x00200032, b"-12.5\\3.0\\4", "LO"),  # a wrong VR
    (0x00280030, b"1.5\\1.5\x00", None),
    (0x00280030, b"0\\1.5", None),
    (0x00180050, b"", None),  # SliceThickness empty
    (0x00180050, b"  ", None),
    (0x00180050, b"8 ", None),
    (0x00180050, b"8\\9", None),
    (0x00180050, b"inf ", None),
    (0x00200013, b" 7", None),  # InstanceNumber
    (0x00200013, b"+7", None),
    (0x00200013, b"7.0 ", None),
    (0x00200013, b"07", None),
    (0x00200013, b"1e3 ", None),
    (0x00200013, b"", None),
    (0x00200013, b"7\\8 ", None),
    (0x00280010, b"\x40\x00\x40\x00", None),  # Rows: two values
    (0x00280010, b"", None),
    (0x00280010, b"\x40", None),
    (0x00080060, b"mr", None),  # Modality
    (0x00080060, b" MR ", None),
    (0x00080060, b"MR\\CT ", None),
    (0x00080060, b"", None),
    (0x0008103E, b"cine sa \x00", None),  # SeriesDescription
    (0x0008103E, b" a\\b ", None),
    (0x0008103E, b"caf\xe9", None),
    (0x00100010, b"Doe^John ", None),  # PatientName
    (0x00100010, b"Doe^John=Yamada^Taro", None),
    (0x00100010, b"M\xfcller^Hans", None),
    (0x00100010, b"A\\B ", None),
    (0x00100010, b"\x1b$B\x1b(B", None),  # ISO 2022 escapes
    (0x00080018, b"1.2.826.0.1.3680043.10.543.7.7\x00", None),  # SOPInstanceUID
    (0x00080018, b"1.2.826.0.1.3680043.10.543.7.7 ", None),
    (0x00080018, b"1.2.3\\4.5.6", None),
    (0x00080018, b"", None),
    (0x00080008, b"ORIGINAL\\PRIMARY\\M\\ND ", None),  # ImageType
    (0x00080008, b"DERIVED ", None),
    (0x00080008, b"", None),
    (0x00181090, b"30", None),  # CardiacNumberOfImages
    (0x00181090, b"0 ", None),
    (0x00181090, b"-1", None),
    (0x00181090, b"999999999999", None),
    (0x00181060, b"412.5 ", None),  # TriggerTime
    (0x00281053, b"2.5 ", None),  # RescaleSlope
    (0x00281053, b"", None),
]


@pytest.mark.parametrize("implicit", [False, True])
def test_value_edge_cases_agree(plain_files: list[Path], tmp_path: Path, implicit: bool) -> None:
    ds = dcmread(plain_files[0])
    for keyword in ("TriggerTime", "RescaleSlope"):
        setattr(ds, keyword, "1")
    for keyword in ("InstanceNumber", "CardiacNumberOfImages"):
        setattr(ds, keyword, 1)
    base = _encode(ds, implicit=implicit)
    fast = cases = 0
    for tag, raw, vr in EDGE_VALUES:
        if implicit and vr is not None:
            continue  # no VR is written in implicit VR
        cases += 1
        fast += _compare(_with_raw_value(base, tag, raw, vr), tmp_path)
    assert fast >= cases // 3, f"only {fast} of {cases} edge cases read fast"


def _nested_sequences(ds: Dataset, depth: int) -> Sequence:
    """Sequences nested ``depth`` deep; undefined lengths at odd depths, defined at even."""
    undefined = depth % 2 == 1
    item = Dataset()
    item.is_undefined_length_sequence_item = undefined
    item.ReferencedSOPClassUID = ds.SOPClassUID
    item.ReferencedSOPInstanceUID = ds.SOPInstanceUID
    if depth > 1:
        item.ReferencedImageSequence = _nested_sequences(ds, depth - 1)
        item["ReferencedImageSequence"].is_undefined_length = not undefined
    return Sequence([item, item])


@pytest.mark.parametrize("implicit", [False, True])
def test_sequences_and_private_elements_are_walked_over(
    plain_files: list[Path], tmp_path: Path, implicit: bool
) -> None:
    ds = dcmread(plain_files[1])
    ds.ReferencedImageSequence = _nested_sequences(ds, 3)
    ds["ReferencedImageSequence"].is_undefined_length = True
    ds.add_new(0x00291010, "OB", b"\x01\x02" * 300)  # private value
    block = Dataset()
    block.add_new(0x00190010, "LO", "CMRQC TEST")
    ds.add_new(0x00190010, "LO", "CMRQC TEST")
    ds.add_new(0x00191001, "SQ", Sequence([block]))  # private sequence
    ds[0x00191001].is_undefined_length = True
    data = _encode(ds, implicit=implicit)
    assert b"\xff\xff\xff\xff" in data[:4000], "pydicom wrote no undefined-length sequence"
    assert _compare(data, tmp_path), "sequences should not stop the fast reader"
    # an undefined-length item cut short of its delimiter: the general path decides
    cut = data.replace(b"\xfe\xff\x0d\xe0\x00\x00\x00\x00", b"", 1)
    assert read_fast_header(cut) is None
    _compare(cut, tmp_path)


def test_pydicom_test_files_agree(tmp_path: Path) -> None:
    fast = 0
    # the files bundled with pydicom (get_testdata_files would try to download more)
    bundled = Path(pydicom.data.__file__).parent / "test_files"
    files = [path for path in sorted(bundled.glob("*.dcm")) if path.stat().st_size < 4_000_000]
    assert len(files) > 50
    for path in files:
        fast += _compare(path.read_bytes(), tmp_path)
    assert fast >= 3, "some of pydicom's plain MR and CT files should be read fast"


@pytest.mark.slow
def test_fuzz_mutants_agree(plain_files: list[Path], tmp_path: Path) -> None:
    rng = random.Random(20261129)
    sources = [path.read_bytes() for path in plain_files]
    sources += [_encode(dcmread(path), implicit=True) for path in plain_files]
    fast = refused = 0
    for index in range(1500):
        source = sources[index % len(sources)]
        if index % 5 == 4:
            path = tmp_path / "source.dcm"
            path.write_bytes(source)
            data = pydicom_mutant(path, rng)
        else:
            data = mutate_body(source, rng)
        fast += _compare(data, tmp_path)
        refused += read_fast_header(data) is None
    print(f"fast reader took {fast} of 1500 mutants")
    assert fast >= 100 and refused >= 100
