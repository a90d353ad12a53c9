"""The training loop the CLI and the retrainer share: in-memory cases to a selected model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cmrqc_qc_predictor.data import FastArrays, fast_arrays_from_cases
from cmrqc_qc_predictor.models import FastConfig, FastQcNet
from cmrqc_qc_predictor.prepare import InputError
from cmrqc_qc_predictor.training import fit_fast
from cmrqc_shared.datasets.splits import QC_TRAIN, QC_VAL
from cmrqc_shared.metrics import dice_per_class
from cmrqc_shared.qcdata.corruptions import dilate, erode, shift
from cmrqc_shared.synth import render_study

TINY = FastConfig(stem=4, widths=(8, 8, 8), hidden=8, aux=False)


def _cases(seeds: range) -> tuple[list, np.ndarray]:  # type: ignore[type-arg]
    cases, targets = [], []
    rng = np.random.default_rng(seeds.start)
    for seed in seeds:
        phase = render_study(seed, phases=("ED",)).phase("ED")
        for corrupt in (None, shift, dilate, erode):
            labels = phase.labels if corrupt is None else corrupt(phase.labels, rng, 1.0)[0]
            spacing = (phase.pixel_spacing_mm, phase.slice_spacing_mm)
            cases.append((phase.image, labels, *spacing))
            targets.append(list(dice_per_class(labels, phase.labels).model_dump().values()))
    return cases, np.asarray(targets, np.float32)


def _tiny_model(data: FastArrays) -> FastQcNet:
    """A tiny fast network standardising the features as ``data`` has them."""
    model = FastQcNet(TINY)
    features = torch.from_numpy(data.features)
    model.set_feature_statistics(features.mean(dim=0), features.std(dim=0))
    return model


def test_fit_fast_learns_and_keeps_the_best_validation_epoch() -> None:
    torch.manual_seed(0)
    train = fast_arrays_from_cases(*_cases(range(QC_TRAIN.start, QC_TRAIN.start + 4)))
    val = fast_arrays_from_cases(*_cases(range(QC_VAL.start, QC_VAL.start + 2)))
    model = _tiny_model(train)
    model, history, val_predicted, stopped = fit_fast(
        model, train, val, epochs=4, batch_size=4, learning_rate=5e-3, progress=False
    )
    assert stopped == "epochs" and len(history) == 4
    assert history[-1]["train_mse"] < history[0]["train_mse"]
    best = min(h["val_mae_mean"] for h in history)
    selected = float(np.mean(np.abs(val_predicted - val.targets).mean(axis=0)))
    assert selected == pytest.approx(best, abs=1e-5)
    assert not model.training


def test_a_case_the_service_would_refuse_is_refused_here_too() -> None:
    phase = render_study(QC_TRAIN.start, phases=("ED",)).phase("ED")
    misaligned = (phase.image, phase.labels[:, :-2], phase.pixel_spacing_mm, 8.0)
    with pytest.raises(InputError):
        fast_arrays_from_cases([misaligned], np.zeros((1, 5), np.float32))
    with pytest.raises(ValueError, match="targets"):
        fast_arrays_from_cases([misaligned], np.zeros((2, 5), np.float32))


def test_the_weight_average_follows_its_formula_and_is_what_is_returned() -> None:
    from cmrqc_qc_predictor.training import _ExponentialAverage

    torch.manual_seed(0)
    model = FastQcNet(TINY)
    average = _ExponentialAverage(model, decay=0.9)
    before = {k: v.clone() for k, v in average.model.state_dict().items()}
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)
    average.update(model)  # first update: warm-up decay min(0.9, 2 / 11)
    weight = 2 / 11
    for name, value in model.state_dict().items():
        if value.dtype.is_floating_point:
            expected = weight * before[name] + (1 - weight) * value
            assert torch.allclose(average.model.state_dict()[name], expected, atol=1e-6)

    train = fast_arrays_from_cases(*_cases(range(QC_TRAIN.start, QC_TRAIN.start + 3)))
    val = fast_arrays_from_cases(*_cases(range(QC_VAL.start, QC_VAL.start + 2)))
    runs = {}
    for options in ({}, {"ema_decay": 0.9}, {"loss_kind": "l1"}):
        torch.manual_seed(0)
        model = _tiny_model(train)
        _, history, val_predicted, _ = fit_fast(
            model,
            train,
            val,
            epochs=2,
            batch_size=4,
            learning_rate=5e-3,
            progress=False,
            **options,  # type: ignore[arg-type]
        )
        best = min(h["val_mae_mean"] for h in history)
        selected = float(np.mean(np.abs(val_predicted - val.targets).mean(axis=0)))
        assert selected == pytest.approx(best, abs=1e-5)
        runs[str(options)] = val_predicted
    plain = runs["{}"]
    assert not np.allclose(runs["{'ema_decay': 0.9}"], plain, atol=1e-4)
    assert not np.allclose(runs["{'loss_kind': 'l1'}"], plain, atol=1e-4)
    with pytest.raises(ValueError, match="loss"):
        fit_fast(model, train, val, epochs=1, progress=False, loss_kind="huber")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ema_decay"):
        fit_fast(model, train, val, epochs=1, progress=False, ema_decay=1.0)


def test_distillation_targets_mix_the_truth_with_a_view_averaged_teacher() -> None:
    from dataclasses import replace

    from cmrqc_qc_predictor.training import distillation_targets, predict_fast_arrays_dihedral

    torch.manual_seed(0)
    data = fast_arrays_from_cases(*_cases(range(QC_TRAIN.start, QC_TRAIN.start + 2)))
    teacher = _tiny_model(data)
    taught = predict_fast_arrays_dihedral(teacher, data.crops, data.features)
    # The 8-view average does not depend on which view the crop arrived in.
    turned = replace(
        data, crops=np.ascontiguousarray(np.flip(np.rot90(data.crops, 1, (-2, -1)), -1))
    )
    again = predict_fast_arrays_dihedral(teacher, turned.crops, turned.features)
    np.testing.assert_allclose(again, taught, atol=1e-5)
    assert not np.allclose(taught, data.targets, atol=1e-3)
    np.testing.assert_allclose(distillation_targets(teacher, data, 0.0), data.targets)
    np.testing.assert_allclose(distillation_targets(teacher, data, 1.0), taught, atol=1e-6)
    mixed = distillation_targets(teacher, data, 0.25)
    np.testing.assert_allclose(mixed, 0.75 * data.targets + 0.25 * taught, atol=1e-6)
    with pytest.raises(ValueError, match="weight"):
        distillation_targets(teacher, data, 1.5)
