"""Corruptions degrade a good segmentation by a controllable amount, deterministically."""

from __future__ import annotations

import numpy as np
import pytest

from cmrqc_shared.metrics import dice_per_class
from cmrqc_shared.qcdata.corruptions import CORRUPTIONS, flood, random_corruption
from cmrqc_shared.synth import SynthConfig, render_study


@pytest.fixture(scope="module")
def truth() -> np.ndarray:
    return render_study(11_000, SynthConfig.clean_config(), phases=("ED",)).phase("ED").labels


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_each_corruption_lowers_the_whole_heart_dice_more_at_higher_severity(
    name: str, truth: np.ndarray
) -> None:
    mild, _ = CORRUPTIONS[name](truth, np.random.default_rng(1), 0.05)
    severe, _ = CORRUPTIONS[name](truth, np.random.default_rng(1), 1.0)
    mild_scores, severe_scores = dice_per_class(mild, truth), dice_per_class(severe, truth)
    worst = min(severe_scores.LV, severe_scores.LVM, severe_scores.RVC)
    assert worst < 0.95, f"{name} at full severity barely changed the segmentation"
    assert np.mean([mild_scores.LV, mild_scores.LVM, mild_scores.RVC]) >= np.mean(
        [severe_scores.LV, severe_scores.LVM, severe_scores.RVC]
    )


def test_corruptions_never_modify_their_input(truth: np.ndarray) -> None:
    before = truth.copy()
    for name, corruption in CORRUPTIONS.items():
        corruption(truth, np.random.default_rng(0), 1.0)
        assert np.array_equal(truth, before), name


def test_random_corruption_is_deterministic_per_seed_and_spans_the_dice_range(
    truth: np.ndarray,
) -> None:
    a, applied_a = random_corruption(truth, np.random.default_rng(5))
    b, applied_b = random_corruption(truth, np.random.default_rng(5))
    assert np.array_equal(a, b) and applied_a == applied_b
    wh = [
        dice_per_class(random_corruption(truth, np.random.default_rng(s))[0], truth).WH
        for s in range(40)
    ]
    assert min(wh) < 0.5 and max(wh) > 0.85


def test_flood_gives_one_class_to_a_large_intensity_band_and_ruins_the_background_dice() -> None:
    phase = render_study(11_000, SynthConfig.clean_config(), phases=("ED",)).phase("ED")
    labels, image = phase.labels, phase.image.astype(np.float32)
    before = labels.copy()
    mild, mild_params = flood(labels, np.random.default_rng(3), 0.0, image)
    severe, severe_params = flood(labels, np.random.default_rng(3), 1.0, image)
    assert np.array_equal(labels, before), "the input must not change"
    for out, params in ((mild, mild_params), (severe, severe_params)):
        flooded = float((out == params["class"]).mean())
        assert flooded >= params["coverage"] - 0.01, "the whole band takes the class"
    assert severe_params["coverage"] == pytest.approx(0.6)
    assert dice_per_class(severe, labels).BG < 0.8  # background Dice far from 1: the point
    again, again_params = flood(labels, np.random.default_rng(3), 1.0, image)
    assert np.array_equal(again, severe) and again_params == severe_params
