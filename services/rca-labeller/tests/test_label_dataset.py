"""`cmrqc rca-labels`: RCA labels for a QC dataset split, appended and resumable."""

from __future__ import annotations

import json
from pathlib import Path

from cmrqc_rca_labeller.engine import EngineConfig, ReferenceBank
from cmrqc_rca_labeller.label_dataset import label_dataset
from cmrqc_rca_labeller.rca import RcaEstimator
from cmrqc_shared.datasets.splits import QC_TRAIN
from cmrqc_shared.metrics import dice_per_class
from cmrqc_shared.qcdata.corruptions import shift
from cmrqc_shared.qcdata.dataset import QcDatasetWriter, QcSample
from cmrqc_shared.synth import render_study


def _dataset(root: Path) -> None:
    import numpy as np

    writer = QcDatasetWriter(root)
    study = render_study(QC_TRAIN.start + 50, phases=("ED",))
    phase = study.phase("ED")
    scan_id = f"{QC_TRAIN.start + 50}-ED"
    writer.write_scan(
        scan_id,
        phase.image,
        phase.labels,
        phase.pixel_spacing_mm,
        phase.slice_spacing_mm,
        np.asarray(study.affine),
    )
    rng = np.random.default_rng(0)
    for member, labels in enumerate([phase.labels, shift(phase.labels, rng, 1.0)[0]]):
        truth = dice_per_class(labels, phase.labels).model_dump()
        sample = QcSample(
            f"{scan_id}-{member}",
            scan_id,
            QC_TRAIN.start + 50,
            "ED",
            "train",
            "corruption",
            str(member),
            truth,
        )
        writer.write_sample(sample, labels.astype(np.uint8))
    writer.finish_scan(scan_id)


def test_labels_are_written_once_per_sample_and_a_rerun_adds_nothing(
    tmp_path: Path, small_bank: ReferenceBank, fast_config: EngineConfig
) -> None:
    _dataset(tmp_path / "ds")
    estimator = RcaEstimator(small_bank, fast_config)
    out = tmp_path / "labels.jsonl"
    assert (
        label_dataset(
            estimator, tmp_path / "ds", out, split="train", max_cases=None, progress=False
        )
        == 2
    )
    assert (
        label_dataset(
            estimator, tmp_path / "ds", out, split="train", max_cases=None, progress=False
        )
        == 0
    )
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 2
    good, shifted = sorted(records, key=lambda r: r["sample_id"])
    assert good["rca_dsc"]["WH"] > shifted["rca_dsc"]["WH"]  # RCA ranks them like the truth
    assert good["true_dsc"]["WH"] == 1.0
