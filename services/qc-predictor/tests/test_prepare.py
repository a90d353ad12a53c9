"""Input preparation: any slice count and spacing -> the 5 × 8 × 224 × 224 grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cmrqc_qc_predictor.features import FEATURE_NAMES, NUM_FEATURES, segmentation_features
from cmrqc_qc_predictor.inputs import case_inputs
from cmrqc_qc_predictor.models import FAST_ARCHITECTURE, PAPER_ARCHITECTURE
from cmrqc_qc_predictor.predictor import Case
from cmrqc_qc_predictor.prepare import (
    CROP_SIZE,
    InputError,
    crop_around_segmentation,
    intensity_window,
    prepare_input,
    segmentation_centre,
    spacing_from_affine,
)


def _disk_case(slices: int, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(slices * 1000 + rows)
    image = rng.integers(0, 3000, size=(slices, rows, cols)).astype(np.uint16)
    labels = np.zeros((slices, rows, cols), np.uint8)
    yy, xx = np.indices((rows, cols))
    radius = np.hypot(yy - rows / 2, xx - cols / 2)
    labels[:, radius < 30] = 2
    labels[:, radius < 20] = 1
    labels[:, (np.abs(yy - rows / 2) < 10) & (xx > cols / 2 + 35) & (xx < cols / 2 + 55)] = 3
    return image, labels


@pytest.mark.parametrize("slices", [1, 2, 7, 8, 10, 17])
def test_any_slice_count_becomes_five_channels_of_8_by_224_by_224(slices: int) -> None:
    image, labels = _disk_case(slices, 180, 200)
    prepared = prepare_input(image, labels, (1.6, 1.6), 8.0)
    assert prepared.tensor.shape == (5, 8, 224, 224)
    assert prepared.tensor.dtype == torch.float32


def test_intensities_lie_in_zero_one_and_label_channels_sum_to_one() -> None:
    image, labels = _disk_case(10, 256, 192)
    grid = prepare_input(image.astype(np.float32) * 7 - 100, labels, (1.4, 1.4), 9.0).tensor
    assert float(grid[0].min()) >= 0.0 and float(grid[0].max()) <= 1.0
    assert float(grid[0].max()) > 0.9  # bilinear resampling of noise softens the maximum
    assert float(grid[1:].min()) >= 0.0 and float(grid[1:].max()) <= 1.0
    torch.testing.assert_close(grid[1:].sum(dim=0), torch.ones(8, 224, 224))


def test_label_channels_are_exactly_one_hot_where_the_labelmap_is_uniform() -> None:
    image, labels = _disk_case(10, 224, 224)
    grid = prepare_input(image, labels, (1.5, 1.5), 8.0).tensor
    centre = grid[1:, :, 112, 112]  # deep inside the LV cavity (label 1)
    corner = grid[1:, :, 5, 5]  # background
    torch.testing.assert_close(centre, torch.tensor([0.0, 1.0, 0.0, 0.0])[:, None].expand(4, 8))
    torch.testing.assert_close(corner, torch.tensor([1.0, 0.0, 0.0, 0.0])[:, None].expand(4, 8))


def test_a_constant_image_becomes_zeros_not_nan() -> None:
    _, labels = _disk_case(4, 100, 100)
    grid = prepare_input(np.full(labels.shape, 5, np.uint16), labels, (2.0, 2.0)).tensor
    assert float(grid[0].abs().max()) == 0.0


def test_the_field_of_view_keeps_its_aspect_ratio_in_a_letterbox() -> None:
    image, labels = _disk_case(6, 200, 100)
    prepared = prepare_input(image, labels, (1.5, 1.5), 8.0)
    row0, row1, col0, col1 = prepared.fov_box
    assert (row1 - row0, col1 - col0) == (224, 112)
    assert prepared.grid_mm == pytest.approx(200 * 1.5 / 224)
    outside = prepared.tensor[:, :, :, : col0 - 1]
    assert float(outside[0].abs().max()) == 0.0 and float(outside[1].min()) == 1.0


def test_a_dropped_slice_is_not_lost_by_the_slice_resampling() -> None:
    image, labels = _disk_case(10, 160, 160)
    dropped = labels.copy()
    dropped[3] = 0
    full = prepare_input(image, labels, (1.5, 1.5), 8.0).tensor
    missing = prepare_input(image, dropped, (1.5, 1.5), 8.0).tensor
    lost = float((full[2:].sum() - missing[2:].sum()) / full[2:].sum())
    assert lost > 0.05


def test_a_labelmap_on_another_grid_is_refused_as_a_grid_mismatch() -> None:
    image, labels = _disk_case(8, 120, 120)
    with pytest.raises(InputError) as caught:
        prepare_input(image, labels[:, :100], (1.5, 1.5))
    assert caught.value.reason == "grid-mismatch"


def test_labels_outside_zero_to_three_are_refused() -> None:
    image, labels = _disk_case(8, 120, 120)
    labels[0, 0, 0] = 7
    with pytest.raises(InputError) as caught:
        prepare_input(image, labels, (1.5, 1.5))
    assert caught.value.reason == "invalid-labels"


def test_the_fast_crop_is_centred_on_the_segmentation_and_stays_inside_the_grid() -> None:
    image, labels = _disk_case(8, 224, 224)
    shifted = np.roll(labels, (-80, -80), axis=(1, 2))
    prepared = prepare_input(image, shifted, (1.5, 1.5))
    crop, (row0, col0) = crop_around_segmentation(prepared.tensor)
    assert crop.shape == (5, 8, CROP_SIZE, CROP_SIZE)
    assert (row0, col0) == (0, 0)  # the heart is near the corner: the window is clamped
    centre = segmentation_centre(prepare_input(image, labels, (1.5, 1.5)).tensor)
    assert abs(centre[0] - 112) <= 2 and 112 <= centre[1] <= 120  # the RV pulls it right


def test_case_inputs_have_the_shapes_each_architecture_expects(synth_case: Case) -> None:
    prepared = prepare_input(synth_case.image, synth_case.labels, synth_case.pixel_spacing_mm, 8.0)
    fast = case_inputs(FAST_ARCHITECTURE, prepared)
    paper = case_inputs(PAPER_ARCHITECTURE, prepared)
    assert fast["crop"].shape == (5, 8, CROP_SIZE, CROP_SIZE)
    assert fast["features"].shape == (NUM_FEATURES,)
    assert torch.isfinite(fast["features"]).all()
    assert paper["grid"].shape == (5, 8, 224, 224)


def test_features_see_mass_outside_the_crop_and_missing_slices(synth_case: Case) -> None:
    labels = synth_case.labels.copy()
    labels[:, :12, :12] = 3  # a false-positive "RV" in the corner of the field of view
    prepared = prepare_input(synth_case.image, labels, synth_case.pixel_spacing_mm, 8.0)
    _, corner = crop_around_segmentation(prepared.tensor)
    values = segmentation_features(prepared.tensor, corner, prepared.grid_mm, 8.0).tolist()
    features = dict(zip(FEATURE_NAMES, values, strict=True))
    assert features["RVC_outside_crop"] > 0.05
    assert features["LV_outside_crop"] == pytest.approx(0.0, abs=1e-6)


def test_spacing_is_read_from_the_affine_columns() -> None:
    affine = [[0.0, 1.2, 0.0, 5.0], [1.5, 0.0, 0.0, 1.0], [0.0, 0.0, 8.0, 2.0], [0, 0, 0, 1]]
    assert spacing_from_affine(affine) == pytest.approx((1.2, 1.5, 8.0))


def _varied_cases() -> list[tuple[str, np.ndarray, np.ndarray, tuple[float, float]]]:
    rng = np.random.default_rng(7)
    cases = []
    for slices, rows, cols, spacing in [
        (1, 160, 200, (1.9, 1.9)),
        (2, 256, 256, (1.2, 1.2)),
        (11, 213, 227, (1.5, 1.3)),
        (14, 192, 256, (1.8, 1.8)),
        (9, 512, 448, (0.7, 0.7)),  # shrinks: the antialiased path
        (10, 120, 100, (2.5, 3.0)),  # grows
    ]:
        image, labels = _disk_case(slices, rows, cols)
        labels[rng.random(labels.shape) < 0.02] = 3  # speckle: non-uniform neighbourhoods
        cases.append((f"uint16-{slices}x{rows}x{cols}", image, labels, spacing))
    image, labels = _disk_case(12, 200, 210)
    cases.append(("int16-negative", (image.astype(np.int16) - 1500), labels, (1.6, 1.6)))
    cases.append(("float64", image.astype(np.float64) * 0.37 + 5.0, labels, (1.6, 1.6)))
    cases.append(("uint8", (image // 12).astype(np.uint8), labels, (1.6, 1.6)))
    cases.append(("constant", np.full(image.shape, 9, np.uint16), labels, (1.6, 1.6)))
    return cases


@pytest.mark.parametrize("case", _varied_cases(), ids=lambda case: case[0])
def test_optimised_preparation_reproduces_the_reference_implementation(case) -> None:
    """The committed models were trained on inputs from the first implementation
    (``reference_prepare``); the optimised one must give the same grid."""
    from .reference_prepare import reference_intensity_window, reference_prepare_input

    _, image, labels, spacing = case
    expected = reference_prepare_input(image, labels, spacing, 8.0)
    prepared = prepare_input(image, labels, spacing, 8.0)
    assert prepared.fov_box == expected.fov_box
    assert prepared.grid_mm == expected.grid_mm and prepared.slice_mm == expected.slice_mm
    torch.testing.assert_close(prepared.tensor, expected.tensor, rtol=0, atol=1e-6)
    window = np.array(intensity_window(image))
    np.testing.assert_allclose(window, reference_intensity_window(image), rtol=1e-6, atol=1e-6)


def test_features_of_the_pooled_grid_match_bilinear_halving() -> None:
    """Features are computed on the 2 × 2 mean of the grid (what the committed model was
    trained with, once computed by bilinear resampling at scale 1/2)."""
    image, labels = _disk_case(10, 200, 230)
    prepared = prepare_input(image, labels, (1.5, 1.5), 8.0)
    halved = torch.nn.functional.interpolate(
        prepared.tensor.reshape(1, 40, 224, 224), size=(112, 112), mode="bilinear"
    ).reshape(5, 8, 112, 112)
    upsampled = halved.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    # The features of a grid whose 2 × 2 blocks are constant are those of its halved grid.
    torch.testing.assert_close(
        segmentation_features(upsampled, (56, 56), 1.5, 8.0),
        segmentation_features(prepared.tensor, (56, 56), 1.5, 8.0),
        rtol=0,
        atol=1e-5,
    )


@pytest.mark.parametrize("case", _varied_cases(), ids=lambda case: case[0])
def test_optimised_features_reproduce_the_reference_implementation(case) -> None:
    """The committed model was trained on the features as first written
    (``reference_features``); the optimised ones sum in another order and agree to float
    rounding — up to ~1e-5 in the intensity SDs, sqrt(E[I²] − E[I]²) in float32 magnifying
    rounding in either implementation (the model standardises them by SDs of ~0.07)."""
    from .reference_features import reference_segmentation_features

    _, image, labels, spacing = case
    prepared = prepare_input(image, labels, spacing, 8.0)
    _, corner = crop_around_segmentation(prepared.tensor)
    expected = reference_segmentation_features(prepared.tensor, corner, prepared.grid_mm, 8.0)
    actual = segmentation_features(prepared.tensor, corner, prepared.grid_mm, 8.0)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=2e-5)
