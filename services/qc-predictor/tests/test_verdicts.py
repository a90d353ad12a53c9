"""Verdicts: intervals against thresholds, and the rules that overrule the model."""

from __future__ import annotations

import numpy as np
import pytest

from cmrqc_qc_predictor.artifact import QcModel
from cmrqc_qc_predictor.predictor import Case, predict_cases
from cmrqc_qc_predictor.verdicts import class_verdict, decide
from cmrqc_shared.events import Verdict


def test_an_interval_straddling_the_threshold_is_uncertain() -> None:
    assert class_verdict(0.65, 0.75, 0.7) is Verdict.UNCERTAIN


def test_an_interval_wholly_above_passes_and_wholly_below_fails() -> None:
    assert class_verdict(0.7, 0.9, 0.7) is Verdict.PASS
    assert class_verdict(0.4, 0.69, 0.7) is Verdict.FAIL


def test_any_failing_class_fails_the_case_and_uncertainty_beats_a_pass() -> None:
    lower = {"WH": 0.8, "LVM": 0.5, "LV": 0.6}
    upper = {"WH": 0.9, "LVM": 0.55, "LV": 0.8}
    assert decide(lower, upper, {"WH": 0.7, "LVM": 0.6}).verdict is Verdict.FAIL
    uncertain = decide(lower, upper, {"WH": 0.7, "LV": 0.7})
    assert uncertain.verdict is Verdict.UNCERTAIN
    assert uncertain.class_verdicts == {"WH": Verdict.PASS, "LV": Verdict.UNCERTAIN}


def test_a_rule_violation_fails_whatever_the_interval_says() -> None:
    decision = decide({"WH": 0.95}, {"WH": 1.0}, {"WH": 0.7}, ["empty-segmentation"])
    assert decision.verdict is Verdict.FAIL and decision.reasons == ["empty-segmentation"]


def _confident_pass_model(model: QcModel) -> QcModel:
    """The small model with its output forced to 0.99 everywhere: it would pass anything."""
    head = model.network.head[-1]  # type: ignore[index]
    head.weight.data.zero_()
    head.bias.data.fill_(8.0)
    return model


def test_an_empty_segmentation_never_passes_even_when_the_model_says_so(
    small_model: QcModel, synth_case: Case
) -> None:
    model = _confident_pass_model(small_model)
    empty = Case(synth_case.image, np.zeros_like(synth_case.labels), (1.5, 1.5), 8.0)
    good, result = predict_cases(model, [synth_case, empty], thresholds={"WH": 0.7})
    assert good.decision.verdict is Verdict.PASS and good.dsc["WH"] > 0.99
    assert result.decision.verdict is Verdict.FAIL
    assert result.decision.reasons == ["empty-segmentation"]


def test_a_labelmap_on_another_grid_fails_with_the_reason_instead_of_raising(
    small_model: QcModel, synth_case: Case
) -> None:
    model = _confident_pass_model(small_model)
    wrong = Case(synth_case.image, synth_case.labels[:, :-3], (1.5, 1.5), 8.0)
    (result,) = predict_cases(model, [wrong])
    assert result.decision.verdict is Verdict.FAIL
    assert result.decision.reasons[0].startswith("grid-mismatch")
    assert result.lower is None and result.dsc["WH"] == 0.0


def test_thresholds_for_unknown_classes_are_refused(small_model: QcModel) -> None:
    with pytest.raises(ValueError, match="unknown classes"):
        predict_cases(small_model, [], thresholds={"AORTA": 0.5})
