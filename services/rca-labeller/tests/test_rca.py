"""RCA estimates: high for good segmentations, low for bad ones, without ground truth."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from cmrqc_rca_labeller.calibration import CLASSES, STATISTICS, RcaCalibration
from cmrqc_rca_labeller.engine import EngineConfig, ReferenceBank
from cmrqc_rca_labeller.rca import RcaEstimator
from cmrqc_rca_labeller.volume import CardiacVolume
from cmrqc_shared.datasets.splits import QC_TEST
from cmrqc_shared.metrics import dice_per_class
from cmrqc_shared.qcdata.corruptions import erode, shift
from cmrqc_shared.synth import render_study


@pytest.fixture(scope="module")
def scan() -> tuple[CardiacVolume, np.ndarray]:
    phase = render_study(QC_TEST.start + 10, phases=("ED",)).phase("ED")
    return CardiacVolume(phase.image, phase.affine), phase.labels


@pytest.fixture(scope="module")
def estimator(small_bank: ReferenceBank, fast_config: EngineConfig) -> RcaEstimator:
    return RcaEstimator(small_bank, fast_config)


def test_rca_of_the_true_segmentation_scores_high(
    estimator: RcaEstimator, scan: tuple[CardiacVolume, np.ndarray]
) -> None:
    image, truth = scan

    result = estimator.estimate(image, truth)

    assert result.estimated_dsc.WH > 0.85
    assert result.estimated_dsc.LV > 0.8
    assert result.top_k_mean_dsc.WH <= result.estimated_dsc.WH
    assert result.references_registered == 4 and result.references_screened == 6
    assert result.top_references[0].dsc.WH == result.estimated_dsc.WH
    # every registered reference has its image similarity after registration (weighted NCC)
    assert set(result.reference_similarity) == {r.reference_id for r in result.per_reference}
    assert all(-1.0 <= v <= 1.0 for v in result.reference_similarity.values())
    assert max(result.reference_similarity.values()) > 0.5  # the true anatomy matches well


def test_the_estimate_is_taken_over_the_best_registered_references(
    small_bank: ReferenceBank, fast_config: EngineConfig, scan: tuple[CardiacVolume, np.ndarray]
) -> None:
    image, truth = scan
    bad, _ = erode(truth, np.random.default_rng(5), 0.6)
    every = RcaEstimator(small_bank, replace(fast_config, score_keep=0)).estimate(image, bad)
    gated = RcaEstimator(small_bank, replace(fast_config, score_keep=2)).estimate(image, bad)

    assert len(gated.per_reference) == len(every.per_reference) == 4  # all still listed
    best_two = sorted(gated.reference_similarity, key=gated.reference_similarity.__getitem__)[-2:]
    dsc = {r.reference_id: r.dsc for r in gated.per_reference}
    assert max(dsc[i].WH for i in best_two) == gated.estimated_dsc.WH
    assert max(dsc[i].LV for i in best_two) == gated.estimated_dsc.LV
    assert {r.reference_id for r in gated.per_reference[:2]} == set(best_two)
    assert gated.top_references[0].dsc.WH == gated.estimated_dsc.WH
    assert max(r.dsc.WH for r in every.per_reference) == every.estimated_dsc.WH
    # keeping one reference: the estimate is the most similar reference's Dice, which here
    # is not the best Dice (so the gate really changed the estimate)
    single = RcaEstimator(small_bank, replace(fast_config, score_keep=1)).estimate(image, bad)
    most_similar = max(single.reference_similarity, key=single.reference_similarity.__getitem__)
    assert single.estimated_dsc.WH == dsc[most_similar].WH < every.estimated_dsc.WH
    assert gated.estimated_dsc.WH <= every.estimated_dsc.WH


def test_the_kept_references_statistics_feed_a_calibration_that_reads_them(
    small_bank: ReferenceBank, fast_config: EngineConfig, scan: tuple[CardiacVolume, np.ndarray]
) -> None:
    image, truth = scan
    bad, _ = erode(truth, np.random.default_rng(5), 0.6)
    config = replace(fast_config, score_keep=3, top_k=2)
    plain = RcaEstimator(small_bank, config).estimate(image, bad)
    statistics = plain.kept_statistics
    kept = sorted(plain.reference_similarity, key=plain.reference_similarity.__getitem__)[-3:]
    wh = sorted(r.dsc.WH for r in plain.per_reference if r.reference_id in kept)
    assert statistics["topk:WH"] == pytest.approx(plain.top_k_mean_dsc.WH, abs=1e-6)
    assert statistics["topk:WH"] == pytest.approx(np.mean(wh[-2:]), abs=1e-6)
    assert statistics["mean:WH"] == pytest.approx(np.mean(wh), abs=1e-6)
    assert statistics["sd:WH"] == pytest.approx(np.std(wh), abs=1e-6)
    assert statistics["similarity:best"] == pytest.approx(
        max(plain.reference_similarity[i] for i in kept), abs=1e-6
    )

    # a calibration whose WH score is the LV spread alone (here about 0.1, where the maximum is
    # about 0.9): the estimator must hand it the spread
    rng = np.random.default_rng(0)
    raw = {name: rng.uniform(0, 1, 200) for name in STATISTICS}
    true = {name: np.clip(raw[name] + 0.01, 0, 1) for name in CLASSES}
    true["WH"] = raw["sd:LV"]
    calibration = RcaCalibration.fit(
        raw, true, reference_set="any", fitted_on="x", features=("sd:LV",)
    )
    calibrated = RcaEstimator(small_bank, config, calibration).estimate(image, bad)
    assert calibrated.calibrated_dsc is not None
    assert statistics["sd:LV"] > 0.05
    assert abs(calibrated.calibrated_dsc.WH - statistics["sd:LV"]) < 0.03
    assert calibrated.estimated_dsc == plain.estimated_dsc


def test_rca_of_a_badly_corrupted_segmentation_scores_low(
    estimator: RcaEstimator, scan: tuple[CardiacVolume, np.ndarray]
) -> None:
    image, truth = scan
    rng = np.random.default_rng(3)
    bad, _ = shift(truth, rng, 1.0)  # moved by ~15 pixels
    bad, _ = erode(bad, rng, 1.0)
    true_wh = dice_per_class(bad, truth).WH
    assert true_wh < 0.55  # the corruption really is bad

    result = estimator.estimate(image, bad)

    assert result.estimated_dsc.WH < 0.65
    assert abs(result.estimated_dsc.WH - true_wh) < 0.15


def test_an_empty_segmentation_gets_no_heart_overlap(
    estimator: RcaEstimator, scan: tuple[CardiacVolume, np.ndarray]
) -> None:
    image, truth = scan

    result = estimator.estimate(image, np.zeros_like(truth))

    assert result.estimated_dsc.WH == 0.0 and result.estimated_dsc.LV == 0.0


def test_a_segmentation_on_another_grid_is_rejected(
    estimator: RcaEstimator, scan: tuple[CardiacVolume, np.ndarray]
) -> None:
    image, truth = scan
    with pytest.raises(ValueError, match="shape"):
        estimator.estimate(image, truth[:, :-1])
