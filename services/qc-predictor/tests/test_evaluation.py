"""`cmrqc evaluate qc` end to end on a small dataset written to disk, one view and several."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cmrqc_qc_predictor.artifact import QcModel
from cmrqc_qc_predictor.classes import OUTPUT_CLASSES
from cmrqc_qc_predictor.data import QcDatasets, balanced_split
from cmrqc_qc_predictor.evaluation import evaluate
from cmrqc_shared.datasets.splits import QC_TEST, QC_VAL
from cmrqc_shared.metrics import dice_per_class
from cmrqc_shared.qcdata.corruptions import dilate, erode, shift
from cmrqc_shared.qcdata.dataset import QcDatasetWriter, QcSample
from cmrqc_shared.synth import render_study


def _write_dataset(root: Path) -> None:
    writer = QcDatasetWriter(root)
    rng = np.random.default_rng(0)
    for split, seeds in (
        ("val", range(QC_VAL.start, QC_VAL.start + 3)),
        ("test", range(QC_TEST.start, QC_TEST.start + 2)),
    ):
        for seed in seeds:
            phase = render_study(seed, phases=("ED",)).phase("ED")
            scan_id = f"{seed}-ED"
            writer.write_scan(
                scan_id,
                phase.image,
                phase.labels,
                phase.pixel_spacing_mm,
                phase.slice_spacing_mm,
                phase.affine,
            )
            for member, corrupt in enumerate((shift, dilate, erode)):
                segmentation = corrupt(phase.labels, rng, 1.0)[0]
                scores = dice_per_class(segmentation, phase.labels).model_dump()
                sample = QcSample(
                    sample_id=f"{scan_id}-{member}",
                    scan_id=scan_id,
                    seed=seed,
                    phase="ED",
                    split=split,
                    family="corruption",
                    member=str(member),
                    true_dsc={name: float(scores[name]) for name in OUTPUT_CLASSES},
                )
                writer.write_sample(sample, segmentation)
            writer.finish_scan(scan_id)


def test_evaluate_refits_the_intervals_on_validation_when_views_are_averaged(
    tmp_path: Path, small_model: QcModel
) -> None:
    root = tmp_path / "dataset"
    _write_dataset(root)
    one = evaluate(small_model, [root], tmp_path / "one", progress=False)
    assert one["views"] == 1
    assert one["coverage"]["calibration_cases"] == small_model.calibration.size
    assert one["coverage"]["half_width"]["WH"] == pytest.approx(0.05)  # the artifact's

    four = evaluate(small_model, [root], tmp_path / "four", progress=False, views=4)
    validation = balanced_split(QcDatasets([root]), "val", seed=0)
    assert four["views"] == 4 and "4 views" in four["coverage"]["calibration"]
    assert four["coverage"]["calibration_cases"] == len(validation) > 0
    assert four["coverage"]["half_width"]["WH"] != pytest.approx(0.05)
    assert four["table1"]["n"] == one["table1"]["n"] > 0
    assert four["table1"]["mae"]["WH"]["all"]["mae"] != pytest.approx(
        one["table1"]["mae"]["WH"]["all"]["mae"], abs=1e-7
    )
    assert Path(four["figures"]["scatter"]).is_file()
