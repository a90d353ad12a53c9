"""`cmrqc retrainer-curve` end to end on a tiny QC dataset: points, JSON and PNG."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cmrqc_retrainer.curve import run_curve
from cmrqc_shared.datasets.splits import QC_TEST, QC_TRAIN, QC_VAL
from cmrqc_shared.metrics import dice_per_class
from cmrqc_shared.qcdata.corruptions import dilate, shift
from cmrqc_shared.qcdata.dataset import QcDatasetWriter, QcSample
from cmrqc_shared.settings import KafkaSettings
from cmrqc_shared.synth import render_study

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.slow]


def _tiny_dataset(root: Path, labels_file: Path) -> None:
    writer = QcDatasetWriter(root)
    rng = np.random.default_rng(3)
    records = []
    scans = [(QC_TRAIN.start + 400 + i, "train") for i in range(6)]
    scans += [(QC_VAL.start + 400 + i, "val") for i in range(2)]
    scans += [(QC_TEST.start + 400 + i, "test") for i in range(2)]
    for seed, split in scans:
        study = render_study(seed, phases=("ED",))
        phase = study.phase("ED")
        scan_id = f"{seed}-ED"
        writer.write_scan(
            scan_id,
            phase.image,
            phase.labels,
            phase.pixel_spacing_mm,
            phase.slice_spacing_mm,
            np.asarray(study.affine),
        )
        for member, labels in enumerate(
            [shift(phase.labels, rng, 1.0)[0], dilate(phase.labels, rng, 0.5)[0]]
        ):
            truth = dice_per_class(labels, phase.labels).model_dump()
            sample = QcSample(
                f"{scan_id}-{member}", scan_id, seed, "ED", split, "corruption", str(member), truth
            )
            writer.write_sample(sample, labels.astype(np.uint8))
            if split != "test":
                rca = {k: float(np.clip(v + rng.normal(0, 0.03), 0, 1)) for k, v in truth.items()}
                records.append(
                    {
                        "sample_id": sample.sample_id,
                        "rca_dsc": rca,
                        "calibrated_dsc": None,
                        "true_dsc": truth,
                    }
                )
        writer.finish_scan(scan_id)
    labels_file.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_the_curve_replays_labels_round_by_round_and_draws_itself(
    tmp_path: Path, kafka: KafkaSettings, redis_url: str
) -> None:
    _tiny_dataset(tmp_path / "ds", tmp_path / "labels.jsonl")
    summary = run_curve(
        dataset_root=tmp_path / "ds",
        labels_file=tmp_path / "labels.jsonl",
        out=tmp_path / "curve",
        kafka=kafka,
        redis_url=redis_url,
        initial_cases=4,
        chunk=6,
        epochs=1,
        initial_epochs=2,
        holdout_fraction=0.3,
        min_holdout=1,
    )
    points = summary["points"]
    assert [p["labels_seen"] for p in points] == [0, 6, 12]
    assert all(np.isfinite(p["test_wh_mae"]) for p in points)
    assert summary["initial_ground_truth_cases"] == 4 and summary["streamed_labels"] == 12
    assert json.loads((tmp_path / "curve" / "curve.json").read_text())["points"] == points
    assert (tmp_path / "curve" / "curve.png").stat().st_size > 10_000
