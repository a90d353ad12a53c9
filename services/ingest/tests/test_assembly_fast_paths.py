"""The fast paths of assembly give the same results as the plain ones.

* pixel data decoded from its located bytes (``frames.PixelLocation``) equals
  ``dcmread(path).pixel_array``; whatever is not plainly located is left to pydicom;
* headers read ahead while a series arrives are what assembly uses, and are then dropped;
* the tracker's running counts decide completion as the full scans did.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pytest
from ingest_testing import RecordingPublisher, make_settings
from pydicom import dcmread
from pydicom.data import get_testdata_file

import cmrqc_ingest.assembly as assembly_module
from cmrqc_ingest.assembly import AssemblyError, assemble_series
from cmrqc_ingest.frames import locate_pixel_data, read_instance, read_instance_record
from cmrqc_ingest.pipeline import IngestPipeline
from cmrqc_ingest.status import StoreStatus
from cmrqc_shared.blobs import BlobStore
from cmrqc_shared.events import IngestSource, VolumeReady

LOCATED = [
    "MR_small.dcm",  # explicit VR, signed 16-bit
    "MR_small_implicit.dcm",
    "MR_small_padded.dcm",
    "CT_small.dcm",
    "liver_1frame.dcm",  # 8-bit
    "rtdose.dcm",  # multi-frame, 32-bit
    "rtdose_1frame.dcm",
    "examples_overlay.dcm",
    "examples_palette.dcm",
    "examples_rgb_color.dcm",
    "SC_rgb_small_odd.dcm",  # odd length, padded
    "SC_ybr_full_422_uncompressed.dcm",  # converted to RGB by pixel_array
]
NOT_LOCATED = [
    "MR_small_bigendian.dcm",
    "MR_small_RLE.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "image_dfl.dcm",  # deflated: offsets refer to the inflated stream
    "MR_truncated.dcm",  # the pixel data runs past the end of the file
]


def _locate(path: Path):  # type: ignore[no-untyped-def]
    data = path.read_bytes()
    return locate_pixel_data(dcmread(io.BytesIO(data), defer_size=4096), len(data))


@pytest.mark.parametrize("name", LOCATED)
def test_located_pixel_data_decodes_exactly_like_pixel_array(name: str) -> None:
    path = Path(get_testdata_file(name))
    location = _locate(path)
    assert location is not None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = dcmread(path).pixel_array
        decoded = location.decode(path)
    assert decoded.dtype == expected.dtype and decoded.shape == expected.shape
    np.testing.assert_array_equal(decoded, expected)
    assert decoded.flags.writeable


def test_unused_high_bits_are_handled_as_pixel_array_handles_them(tmp_path: Path) -> None:
    ds = dcmread(get_testdata_file("MR_small.dcm"))
    pixels = np.frombuffer(ds.PixelData, dtype="<i2").copy()
    pixels[::7] = -1  # every bit set, including the four above BitsStored
    ds.PixelData = pixels.tobytes()
    ds.BitsStored, ds.HighBit = 12, 11
    path = tmp_path / "twelve-bit.dcm"
    ds.save_as(path)
    location = _locate(path)
    assert location is not None
    np.testing.assert_array_equal(location.decode(path), dcmread(path).pixel_array)


@pytest.mark.parametrize("name", NOT_LOCATED)
def test_compressed_big_endian_deflated_or_truncated_pixel_data_is_left_to_pydicom(
    name: str,
) -> None:
    assert _locate(Path(get_testdata_file(name))) is None


def test_a_located_instance_reads_the_same_header_as_before(make_study) -> None:  # type: ignore[no-untyped-def]
    _, paths = make_study()
    record = read_instance_record(paths[0])
    assert record.pixels is not None
    header, frames, identifiers = read_instance(paths[0])
    assert (record.header, record.frames, record.identifiers) == (header, frames, identifiers)


def test_a_file_cut_short_inside_its_pixel_data_is_still_undecodable(make_study) -> None:  # type: ignore[no-untyped-def]
    _, paths = make_study()
    data = paths[3].read_bytes()
    paths[3].write_bytes(data[: len(data) - 100])
    assert read_instance_record(paths[3]).pixels is None
    with pytest.raises(AssemblyError) as failure:
        assemble_series(paths)
    assert failure.value.reason == "undecodable-pixels"


def _receive(pipeline: IngestPipeline, paths: list[Path], source: IngestSource) -> None:
    for path in paths:
        result = pipeline.receive(path.read_bytes(), source=source, session="s")
        assert result.status == StoreStatus.SUCCESS, result


def test_headers_read_ahead_are_used_at_assembly_and_then_dropped(  # type: ignore[no-untyped-def]
    make_study, tmp_path: Path, blobs: BlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, paths = make_study()
    cold_recorder = RecordingPublisher()
    cold = IngestPipeline(make_settings(tmp_path / "cold"), blobs=blobs, publisher=cold_recorder)
    cold.open()
    _receive(cold, paths, IngestSource.C_STORE)
    [outcome] = cold.assemble_ready()  # every header read at assembly
    cold.close()
    assert outcome.kind == "published"

    recorder = RecordingPublisher()
    warm = IngestPipeline(make_settings(tmp_path / "warm"), blobs=blobs, publisher=recorder)
    warm.open()
    reads: list[Path] = []
    real_read = assembly_module.read_instance_record

    def counting_read(path: Path):  # type: ignore[no-untyped-def]
        reads.append(path)
        return real_read(path)

    monkeypatch.setattr(assembly_module, "read_instance_record", counting_read)
    outcomes = []
    for path in paths:  # as the assembler thread does, woken by arrivals
        _receive(warm, [path], IngestSource.C_STORE)
        warm.tracker.wakeup.clear()
        outcomes += warm.assemble_ready()
    warm.close()
    [outcome] = outcomes
    assert outcome.kind == "published"
    assert len(reads) <= 1  # at most the last instance, which completed the series
    assert warm._read_ahead == {} and not warm._read_ahead_queue
    assert [e.event_id for e in recorder.events] == [e.event_id for e in cold_recorder.events]
    for ours, theirs in zip(
        recorder.of_type(VolumeReady), cold_recorder.of_type(VolumeReady), strict=True
    ):
        assert ours.volume == theirs.volume and ours.affine == theirs.affine  # type: ignore[attr-defined]


def test_backfilled_instances_are_not_read_ahead(  # type: ignore[no-untyped-def]
    make_study, pipeline: IngestPipeline
) -> None:
    _, paths = make_study()
    _receive(pipeline, paths[:2], IngestSource.BACKFILL)
    assert not pipeline._read_ahead_queue and not pipeline.tracker.wakeup.is_set()
