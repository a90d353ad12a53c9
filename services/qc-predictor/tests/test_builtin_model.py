"""The committed fast model: loads safely and beats predicting the training mean on cases
it never saw (subjects from the QC test seed range that no dataset uses)."""

from __future__ import annotations

import numpy as np
import pytest

from cmrqc_qc_predictor.artifact import BUILTIN_FAST, load_artifact_file
from cmrqc_qc_predictor.classes import OUTPUT_CLASSES
from cmrqc_qc_predictor.devdata import DevDatasetPlan, scan_samples
from cmrqc_qc_predictor.models import FAST_ARCHITECTURE
from cmrqc_qc_predictor.predictor import Case, predict_cases
from cmrqc_shared.datasets.splits import QC_TEST
from cmrqc_shared.metrics import dice_per_class
from cmrqc_shared.synth import render_study

UNSEEN_SUBJECTS = (QC_TEST.start + 900, QC_TEST.start + 901)
"""Test-range subjects beyond the dev dataset's first 40: never trained, calibrated or tuned on."""


@pytest.fixture(scope="module")
def held_out() -> tuple[list[Case], np.ndarray]:
    cases, truth = [], []
    for seed in UNSEEN_SUBJECTS:
        phase = render_study(seed, phases=("ED",)).phase("ED")
        samples = scan_samples(
            seed, "ED", phase.image, phase.labels, phase.pixel_spacing_mm, DevDatasetPlan()
        )
        for _, _, segmentation, _ in samples:
            cases.append(
                Case(phase.image, segmentation, phase.pixel_spacing_mm, phase.slice_spacing_mm)
            )
            scores = dice_per_class(segmentation, phase.labels)
            truth.append([scores.get(name) for name in OUTPUT_CLASSES])
    return cases, np.array(truth)


def test_the_committed_fast_model_loads_with_its_calibration_and_card() -> None:
    model = load_artifact_file(BUILTIN_FAST)
    assert model.architecture == FAST_ARCHITECTURE
    assert model.calibration.size >= 100
    assert set(model.card["data"]["train_target_mean"]) == set(OUTPUT_CLASSES)
    assert BUILTIN_FAST.stat().st_size < 5_000_000


def test_the_committed_fast_model_beats_the_training_mean_on_unseen_cases(
    held_out: tuple[list[Case], np.ndarray],
) -> None:
    cases, truth = held_out
    model = load_artifact_file(BUILTIN_FAST)
    predictions = predict_cases(model, cases)
    predicted = np.array([[p.dsc[name] for name in OUTPUT_CLASSES] for p in predictions])
    mean = model.card["data"]["train_target_mean"]
    baseline = np.array([mean[name] for name in OUTPUT_CLASSES])
    model_mae = np.abs(predicted - truth).mean(axis=0)
    baseline_mae = np.abs(baseline - truth).mean(axis=0)
    wh = OUTPUT_CLASSES.index("WH")
    print(f"MAE model {model_mae.round(3)} vs training mean {baseline_mae.round(3)}")
    assert len(cases) >= 20
    assert model_mae[wh] < 0.5 * baseline_mae[wh]
    assert model_mae.mean() < 0.6 * baseline_mae.mean()


def test_averaging_views_is_the_mean_of_the_turned_crops_and_uses_the_given_intervals(
    held_out: tuple[list[Case], np.ndarray],
) -> None:
    import torch

    from cmrqc_qc_predictor.conformal import ConformalCalibration
    from cmrqc_qc_predictor.inputs import case_inputs, collate
    from cmrqc_qc_predictor.predictor import run_network, view_of
    from cmrqc_qc_predictor.prepare import prepare_input

    cases, _ = held_out
    model = load_artifact_file(BUILTIN_FAST)
    case = cases[0]
    prepared = prepare_input(case.image, case.labels, case.pixel_spacing_mm, case.slice_spacing_mm)
    batch = collate([case_inputs(model.architecture, prepared)])
    cpu = torch.device("cpu")
    one_by_one = [
        run_network(model, {**batch, "crop": view_of(batch["crop"], view)}, cpu)
        for view in range(8)
    ]
    averaged = run_network(model, batch, cpu, views=8)
    np.testing.assert_allclose(averaged, np.mean(one_by_one, axis=0), atol=1e-5)
    assert not np.allclose(one_by_one[0], one_by_one[3], atol=1e-4)  # the views do differ
    # Eight views are eight different crops: rotations by 0-270 degrees, each mirrored or not.
    crops = [view_of(batch["crop"], view) for view in range(8)]
    assert all(not torch.equal(crops[a], crops[b]) for a in range(8) for b in range(a))

    narrow = ConformalCalibration(np.full((10, len(OUTPUT_CLASSES)), 0.01, np.float32))
    (prediction,) = predict_cases(model, [case], views=4, calibration=narrow, coverage=0.5)
    wh = prediction.dsc["WH"]
    assert prediction.upper is not None and prediction.upper["WH"] == pytest.approx(
        min(wh + 0.01, 1.0), abs=1e-6
    )
    with pytest.raises(ValueError, match="views"):
        predict_cases(model, [case], views=9)
    with pytest.raises(ValueError, match="view"):
        view_of(batch["crop"], 8)


def test_the_committed_fast_model_carries_intervals_for_averaged_views(
    held_out: tuple[list[Case], np.ndarray],
) -> None:
    model = load_artifact_file(BUILTIN_FAST)
    assert sorted(model.view_calibrations) == [2, 4, 8]
    assert all(c.size == model.calibration.size for c in model.view_calibrations.values())
    wh = OUTPUT_CLASSES.index("WH")
    widths = [model.calibration_for(n).half_widths(0.9)[wh] for n in (1, 2, 4, 8)]
    assert widths[-1] < widths[0]  # averaged views err less on validation: narrower intervals
    recorded = model.card["view_calibrations"]["8"]
    assert recorded["half_width_90"]["WH"] == pytest.approx(float(widths[-1]))
    assert recorded["mae"]["WH"] < model.card["validation"]["mae"]["WH"]
    cases, _ = held_out
    (prediction,) = predict_cases(model, cases[:1], views=8)
    assert prediction.upper is not None and prediction.lower is not None
    predicted_wh, half = prediction.dsc["WH"], float(widths[-1])
    assert prediction.upper["WH"] == pytest.approx(min(predicted_wh + half, 1.0), abs=1e-6)
    assert prediction.lower["WH"] == pytest.approx(max(predicted_wh - half, 0.0), abs=1e-6)
