"""Fixtures of the QC predictor's tests: a synthetic case and small model artifacts."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pytest
import torch

from cmrqc_qc_predictor.artifact import QcModel, artifact_bytes, load_artifact
from cmrqc_qc_predictor.conformal import ConformalCalibration
from cmrqc_qc_predictor.models import FAST_ARCHITECTURE, FastConfig, FastQcNet
from cmrqc_qc_predictor.predictor import Case
from cmrqc_shared.datasets.splits import QC_TEST
from cmrqc_shared.synth import render_study

SMALL = FastConfig(stem=4, widths=(8, 8, 8), hidden=8)


@pytest.fixture(scope="session")
def synth_case() -> Case:
    """The ED phase of the first QC test subject, its true labels as the segmentation."""
    phase = render_study(QC_TEST.start, phases=("ED",)).phase("ED")
    return Case(phase.image, phase.labels, phase.pixel_spacing_mm, phase.slice_spacing_mm)


def small_fast_artifact(version: str = "test", seed: int = 0, half_width: float = 0.05) -> bytes:
    """A tiny, untrained fast-architecture artifact with constant residuals ``half_width``."""
    torch.manual_seed(seed)
    network = FastQcNet(SMALL)
    calibration = ConformalCalibration(np.full((20, 5), half_width, np.float32))
    return artifact_bytes(
        network,
        architecture=FAST_ARCHITECTURE,
        calibration=calibration,
        name="qc-predictor",
        version=version,
        options=asdict(SMALL),
    )


@pytest.fixture
def small_model() -> QcModel:
    return load_artifact(small_fast_artifact())
