"""Write a synthetic study as DICOM MR (one file per slice per phase) or Enhanced MR.

Patient identifiers are plainly fake (``SYNTHETIC^SUBJECT<seed>``, ``SYN-<seed>``, birth
date 19000101). UIDs come from :func:`pydicom.uid.generate_uid` with entropy derived from
the seed and the configuration fingerprint: deterministic per (seed, config) and distinct
across seeds.

Classic files are named ``IM_<InstanceNumber:04d>.dcm``. Both phases form one cine series
(distinguished by TriggerTime); InstanceNumber follows acquisition order, base to apex,
phase fastest. All geometry comes from :class:`cmrqc_shared.synth.geometry.StackGeometry`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    EnhancedMRImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)
from pydicom.valuerep import DSfloat

from cmrqc_shared.synth.render import GENERATOR_VERSION, SyntheticStudy

logger = logging.getLogger(__name__)

MANUFACTURER = "CMRQC-SYNTH"
SERIES_DESCRIPTION = "cine_sax"


def _ds(value: float) -> DSfloat:
    """Decimal string formatted to fit DICOM's 16 characters (~1e-10 relative precision)."""
    return DSfloat(float(value), auto_format=True)


def _uid(study: SyntheticStudy, *parts: str) -> str:
    entropy = ["cmrqc-synth", str(study.seed), study.config.fingerprint(), *parts]
    return str(generate_uid(entropy_srcs=entropy))


def study_uids(study: SyntheticStudy, enhanced: bool = False) -> dict[str, str]:
    """Deterministic Study, Series and FrameOfReference UIDs of ``study``."""
    return {
        "StudyInstanceUID": _uid(study, "study"),
        "SeriesInstanceUID": _uid(study, "series", "enhanced" if enhanced else "classic"),
        "FrameOfReferenceUID": _uid(study, "frame-of-reference"),
    }


def _study_time(seed: int) -> str:
    return f"{8 + seed % 10:02d}{(seed * 7) % 60:02d}{(seed * 13) % 60:02d}"


def _window(study: SyntheticStudy) -> tuple[float, float]:
    data = np.concatenate([p.image.ravel() for p in study.phases])
    lo, hi = np.percentile(data, [1.0, 99.5])
    return float(0.5 * (lo + hi)), float(max(hi - lo, 1.0))


def _bits_stored(study: SyntheticStudy) -> int:
    return max(8, int(study.config.max_pixel_value).bit_length())


def _file_meta(sop_class: str, sop_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "CMRQC_SYNTH_1"
    return meta


def _common(study: SyntheticStudy, ds: Dataset, enhanced: bool) -> None:
    """Patient, study, series, equipment and frame-of-reference attributes."""
    seed = study.seed
    acq = study.acquisition
    uids = study_uids(study, enhanced)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = f"SYNTHETIC^SUBJECT{seed}"
    ds.PatientID = f"SYN-{seed}"
    ds.PatientBirthDate = "19000101"
    ds.PatientSex = "O"
    ds.PatientIdentityRemoved = "NO"
    ds.StudyInstanceUID = uids["StudyInstanceUID"]
    ds.SeriesInstanceUID = uids["SeriesInstanceUID"]
    ds.FrameOfReferenceUID = uids["FrameOfReferenceUID"]
    ds.PositionReferenceIndicator = ""
    ds.StudyDate = "20000101"
    ds.StudyTime = _study_time(seed)
    ds.SeriesDate = ds.StudyDate
    ds.SeriesTime = ds.StudyTime
    ds.ContentDate = ds.StudyDate
    ds.ContentTime = ds.StudyTime
    ds.AccessionNumber = f"SYN{seed}"
    ds.StudyID = f"SYN{seed % 100000}"
    ds.StudyDescription = "SYNTHETIC cardiac MR"
    ds.ReferringPhysicianName = ""
    ds.Modality = "MR"
    ds.SeriesDescription = SERIES_DESCRIPTION
    ds.SeriesNumber = 2 if enhanced else 1
    ds.BodyPartExamined = "HEART"
    ds.PatientPosition = "HFS"
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = "cmrqc_shared.synth"
    ds.SoftwareVersions = GENERATOR_VERSION
    ds.DeviceSerialNumber = "0"
    ds.InstitutionName = "SYNTHETIC"
    ds.MagneticFieldStrength = _ds(acq.field_strength_t)
    ds.ImageComments = f"SYNTHETIC image, cmrqc_shared.synth seed={seed}"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = study.geometry.rows
    ds.Columns = study.geometry.cols
    bits = _bits_stored(study)
    ds.BitsAllocated = 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0


def _sop_common(ds: Dataset, sop_class: str, sop_uid: str) -> None:
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.InstanceCreationDate = ds.StudyDate
    ds.InstanceCreationTime = ds.StudyTime


def write_dicom_series(
    study: SyntheticStudy, out_dir: str | Path, enhanced: bool = False
) -> list[Path]:
    """Write ``study`` as DICOM files in ``out_dir`` and return their paths.

    Args:
        study: the rendered study.
        out_dir: output directory (created if missing).
        enhanced: write one Enhanced MR Image Storage multi-frame file instead of one
            MR Image Storage file per slice per phase.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if enhanced:
        return [_write_enhanced(study, out)]
    return _write_classic(study, out)


def _write_classic(study: SyntheticStudy, out: Path) -> list[Path]:
    geo, acq = study.geometry, study.acquisition
    n, n_ph = geo.n_slices, len(study.phases)
    wc, ww = _window(study)
    row_sp, col_sp = geo.pixel_spacing_mm
    paths: list[Path] = []
    for acq_index in range(n):
        k = n - 1 - acq_index  # acquisition runs base (k = n-1) to apex (k = 0)
        ipp = geo.image_position(k)
        for t, phase in enumerate(study.phases):
            instance = acq_index * n_ph + t + 1
            sop_uid = _uid(study, "classic", phase.name, str(k))
            ds = Dataset()
            ds.file_meta = _file_meta(MRImageStorage, sop_uid)
            _common(study, ds, enhanced=False)
            _sop_common(ds, MRImageStorage, sop_uid)
            ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
            ds.AcquisitionNumber = 1
            ds.InstanceNumber = instance
            ds.ImagePositionPatient = [_ds(v) for v in ipp]
            ds.ImageOrientationPatient = [_ds(v) for v in geo.image_orientation]
            ds.PixelSpacing = [_ds(row_sp), _ds(col_sp)]
            ds.SliceThickness = _ds(geo.slice_thickness_mm)
            ds.SpacingBetweenSlices = _ds(geo.slice_spacing_mm)
            ds.SliceLocation = _ds(geo.slice_location(k))
            ds.TriggerTime = _ds(phase.trigger_time_ms)
            ds.NominalInterval = round(acq.rr_interval_ms)
            ds.HeartRate = round(60000.0 / acq.rr_interval_ms)
            ds.CardiacNumberOfImages = n_ph
            ds.TemporalPositionIdentifier = t + 1
            ds.NumberOfTemporalPositions = n_ph
            ds.ImagesInAcquisition = n * n_ph
            ds.ScanningSequence = "GR"
            ds.SequenceVariant = "SS"
            ds.ScanOptions = "CG"
            ds.MRAcquisitionType = "2D"
            ds.SequenceName = "bSSFP_cine"
            ds.RepetitionTime = _ds(acq.repetition_time_ms)
            ds.EchoTime = _ds(acq.echo_time_ms)
            ds.FlipAngle = _ds(acq.flip_angle_deg)
            ds.ImagingFrequency = _ds(42.577478 * acq.field_strength_t)
            ds.ImagedNucleus = "1H"
            ds.EchoTrainLength = 1
            ds.InPlanePhaseEncodingDirection = geo.phase_encode
            n_pe = geo.rows if geo.phase_encode == "COL" else geo.cols
            n_ro = geo.cols if geo.phase_encode == "COL" else geo.rows
            acq_pe = round(n_pe * acq.kspace_fraction_pe)
            acq_ro = round(n_ro * acq.kspace_fraction_ro)
            # (frequency rows, frequency columns, phase rows, phase columns)
            ds.AcquisitionMatrix = (
                [0, acq_ro, acq_pe, 0] if geo.phase_encode == "COL" else [acq_ro, 0, 0, acq_pe]
            )
            ds.PercentSampling = _ds(100.0 * acq.kspace_fraction_pe)
            ds.PercentPhaseFieldOfView = _ds(100.0 * n_pe / n_ro)
            ds.WindowCenter = _ds(wc)
            ds.WindowWidth = _ds(ww)
            ds.RescaleIntercept = _ds(0.0)
            ds.RescaleSlope = _ds(1.0)
            ds.RescaleType = "US"
            ds.PixelData = np.ascontiguousarray(phase.image[k]).astype("<u2").tobytes()
            path = out / f"IM_{instance:04d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
    logger.debug("wrote %d DICOM files to %s", len(paths), out)
    return paths


def _item(**attrs: object) -> Dataset:
    item = Dataset()
    for key, value in attrs.items():
        setattr(item, key, value)
    return item


def _write_enhanced(study: SyntheticStudy, out: Path) -> Path:
    geo, acq = study.geometry, study.acquisition
    n, n_ph = geo.n_slices, len(study.phases)
    wc, ww = _window(study)
    row_sp, col_sp = geo.pixel_spacing_mm
    sop_uid = _uid(study, "enhanced", "instance")
    dim_uid = _uid(study, "enhanced", "dimension-organization")
    ds = Dataset()
    ds.file_meta = _file_meta(EnhancedMRImageStorage, sop_uid)
    _common(study, ds, enhanced=True)
    _sop_common(ds, EnhancedMRImageStorage, sop_uid)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "CINE", "NONE"]
    ds.InstanceNumber = 1
    ds.AcquisitionNumber = 1
    ds.AcquisitionDateTime = ds.StudyDate + ds.StudyTime
    ds.AcquisitionDuration = _ds(n * acq.rr_interval_ms * 12 / 1000.0)
    ds.NumberOfFrames = n * n_ph
    ds.PixelPresentation = "MONOCHROME"
    ds.VolumetricProperties = "VOLUME"
    ds.VolumeBasedCalculationTechnique = "NONE"
    ds.ComplexImageComponent = "MAGNITUDE"
    ds.AcquisitionContrast = "UNKNOWN"
    ds.ContentQualification = "RESEARCH"
    ds.ResonantNucleus = "1H"
    ds.KSpaceFiltering = "TUKEY"
    ds.ApplicableSafetyStandardAgency = "IEC"
    ds.ImageComments = f"SYNTHETIC image, cmrqc_shared.synth seed={study.seed}"
    ds.PulseSequenceName = "bSSFP_cine"
    ds.MRAcquisitionType = "2D"
    ds.EchoPulseSequence = "GRADIENT"
    ds.MultipleSpinEcho = "NO"
    ds.MultiPlanarExcitation = "NO"
    ds.PhaseContrast = "NO"
    ds.TimeOfFlightContrast = "NO"
    ds.SteadyStatePulseSequence = "FREE_PRECESSION"
    ds.EchoPlanarPulseSequence = "NO"
    ds.SaturationRecovery = "NO"
    ds.SpectrallySelectedSuppression = "NONE"
    ds.OversamplingPhase = "NONE"
    ds.GeometryOfKSpaceTraversal = "RECTILINEAR"
    ds.RectilinearPhaseEncodeReordering = "LINEAR"
    ds.SegmentedKSpaceTraversal = "PARTIAL"
    ds.CoverageOfKSpace = "FULL"
    ds.NumberOfKSpaceTrajectories = 1
    ds.CardiacSynchronizationTechnique = "RETROSPECTIVE"
    ds.CardiacSignalSource = "ECG"
    ds.CardiacRRIntervalSpecified = _ds(acq.rr_interval_ms)
    ds.CardiacBeatRejectionTechnique = "NONE"
    ds.CardiacFramingType = "TRACKING"
    ds.AcquisitionContextSequence = Sequence([])
    ds.PresentationLUTShape = "IDENTITY"
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"

    ds.DimensionOrganizationSequence = Sequence([_item(DimensionOrganizationUID=dim_uid)])
    fcs = Tag("FrameContentSequence")
    ds.DimensionIndexSequence = Sequence(
        [
            _item(
                DimensionOrganizationUID=dim_uid,
                DimensionIndexPointer=Tag("StackID"),
                FunctionalGroupPointer=fcs,
                DimensionDescriptionLabel="Stack ID",
            ),
            _item(
                DimensionOrganizationUID=dim_uid,
                DimensionIndexPointer=Tag("InStackPositionNumber"),
                FunctionalGroupPointer=fcs,
                DimensionDescriptionLabel="In-Stack Position Number",
            ),
            _item(
                DimensionOrganizationUID=dim_uid,
                DimensionIndexPointer=Tag("TemporalPositionIndex"),
                FunctionalGroupPointer=fcs,
                DimensionDescriptionLabel="Temporal Position Index",
            ),
        ]
    )

    n_pe = geo.rows if geo.phase_encode == "COL" else geo.cols
    n_ro = geo.cols if geo.phase_encode == "COL" else geo.rows
    shared = _item(
        PixelMeasuresSequence=Sequence(
            [
                _item(
                    PixelSpacing=[_ds(row_sp), _ds(col_sp)],
                    SliceThickness=_ds(geo.slice_thickness_mm),
                    SpacingBetweenSlices=_ds(geo.slice_spacing_mm),
                )
            ]
        ),
        PlaneOrientationSequence=Sequence(
            [_item(ImageOrientationPatient=[_ds(v) for v in geo.image_orientation])]
        ),
        MRImageFrameTypeSequence=Sequence(
            [
                _item(
                    FrameType=["ORIGINAL", "PRIMARY", "CINE", "NONE"],
                    PixelPresentation="MONOCHROME",
                    VolumetricProperties="VOLUME",
                    VolumeBasedCalculationTechnique="NONE",
                    ComplexImageComponent="MAGNITUDE",
                    AcquisitionContrast="UNKNOWN",
                )
            ]
        ),
        MRTimingAndRelatedParametersSequence=Sequence(
            [
                _item(
                    RepetitionTime=_ds(acq.repetition_time_ms),
                    FlipAngle=_ds(acq.flip_angle_deg),
                    EchoTrainLength=1,
                    RFEchoTrainLength=1,
                    GradientEchoTrainLength=1,
                )
            ]
        ),
        MREchoSequence=Sequence([_item(EffectiveEchoTime=_ds(acq.echo_time_ms))]),
        MRFOVGeometrySequence=Sequence(
            [
                _item(
                    InPlanePhaseEncodingDirection=geo.phase_encode,
                    MRAcquisitionFrequencyEncodingSteps=round(n_ro * acq.kspace_fraction_ro),
                    MRAcquisitionPhaseEncodingStepsInPlane=round(n_pe * acq.kspace_fraction_pe),
                    PercentSampling=_ds(100.0 * acq.kspace_fraction_pe),
                    PercentPhaseFieldOfView=_ds(100.0 * n_pe / n_ro),
                )
            ]
        ),
        PixelValueTransformationSequence=Sequence(
            [_item(RescaleIntercept=_ds(0.0), RescaleSlope=_ds(1.0), RescaleType="US")]
        ),
        FrameVOILUTSequence=Sequence([_item(WindowCenter=_ds(wc), WindowWidth=_ds(ww))]),
        FrameAnatomySequence=Sequence(
            [
                _item(
                    FrameLaterality="U",
                    AnatomicRegionSequence=Sequence(
                        [
                            _item(
                                CodeValue="80891009",
                                CodingSchemeDesignator="SCT",
                                CodeMeaning="Heart",
                            )
                        ]
                    ),
                )
            ]
        ),
    )
    ds.SharedFunctionalGroupsSequence = Sequence([shared])

    per_frame: list[Dataset] = []
    frames: list[np.ndarray] = []
    for t, phase in enumerate(study.phases):
        for acq_index in range(n):
            k = n - 1 - acq_index
            frames.append(phase.image[k])
            per_frame.append(
                _item(
                    FrameContentSequence=Sequence(
                        [
                            _item(
                                FrameAcquisitionDateTime=ds.AcquisitionDateTime,
                                FrameReferenceDateTime=ds.AcquisitionDateTime,
                                FrameAcquisitionDuration=_ds(acq.rr_interval_ms),
                                StackID="1",
                                InStackPositionNumber=acq_index + 1,
                                TemporalPositionIndex=t + 1,
                                DimensionIndexValues=[1, acq_index + 1, t + 1],
                            )
                        ]
                    ),
                    PlanePositionSequence=Sequence(
                        [_item(ImagePositionPatient=[_ds(v) for v in geo.image_position(k)])]
                    ),
                    CardiacSynchronizationSequence=Sequence(
                        [
                            _item(
                                NominalCardiacTriggerDelayTime=_ds(phase.trigger_time_ms),
                                ActualCardiacTriggerDelayTime=_ds(phase.trigger_time_ms),
                                RRIntervalTimeNominal=_ds(acq.rr_interval_ms),
                            )
                        ]
                    ),
                )
            )
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    ds.PixelData = np.ascontiguousarray(np.stack(frames)).astype("<u2").tobytes()
    path = out / "EM_cine_sax.dcm"
    ds.save_as(path, enforce_file_format=True)
    logger.debug("wrote enhanced DICOM %s (%d frames)", path, len(frames))
    return path
