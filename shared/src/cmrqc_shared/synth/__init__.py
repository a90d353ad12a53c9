"""Synthetic short-axis cardiac cine MR with exact ground truth.

Quick use::

    from cmrqc_shared.synth import render_study, write_dicom_series, write_ground_truth_nifti

    study = render_study(seed=7)                       # arrays only, ~0.5 s
    ed = study.phase("ED")                             # ed.image uint16 [k, j, i], ed.labels uint8
    study.affine                                       # voxel (i, j, k) -> patient LPS mm
    write_dicom_series(study, "out/dicom")             # one MR file per slice per phase
    write_ground_truth_nifti(study, "out/gt")          # labels_ED/ES.nii.gz (RAS) + synth.json

Labels: 0 background, 1 LV cavity, 2 LV myocardium, 3 RV cavity.
"""

from cmrqc_shared.synth.anatomy import SubjectAnatomy, sample_anatomy
from cmrqc_shared.synth.artefacts import AppliedArtefact
from cmrqc_shared.synth.config import ARTEFACT_NAMES, ArtefactProbabilities, SynthConfig
from cmrqc_shared.synth.dicom_writer import study_uids, write_dicom_series
from cmrqc_shared.synth.figure import write_example_page
from cmrqc_shared.synth.geometry import LPS_TO_RAS, StackGeometry, affine_from_dicom
from cmrqc_shared.synth.ground_truth import (
    from_nifti_order,
    to_nifti_order,
    write_ground_truth_nifti,
    write_study,
)
from cmrqc_shared.synth.heart import LABEL_BACKGROUND, LABEL_LV, LABEL_MYO, LABEL_RV
from cmrqc_shared.synth.render import (
    PhaseVolume,
    StudyPlan,
    SyntheticStudy,
    plan_study,
    render_plan,
    render_study,
)

__all__ = [
    "ARTEFACT_NAMES",
    "LABEL_BACKGROUND",
    "LABEL_LV",
    "LABEL_MYO",
    "LABEL_RV",
    "LPS_TO_RAS",
    "AppliedArtefact",
    "ArtefactProbabilities",
    "PhaseVolume",
    "StackGeometry",
    "StudyPlan",
    "SubjectAnatomy",
    "SynthConfig",
    "SyntheticStudy",
    "affine_from_dicom",
    "from_nifti_order",
    "plan_study",
    "render_plan",
    "render_study",
    "sample_anatomy",
    "study_uids",
    "to_nifti_order",
    "write_dicom_series",
    "write_example_page",
    "write_ground_truth_nifti",
    "write_study",
]
