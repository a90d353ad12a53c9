"""Pre- and post-processing without a network: grids, normalisation, validation, clean-up."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cmrqc_segmenter.contract import NUM_CLASSES, InputContract
from cmrqc_segmenter.data import LabelledVolume
from cmrqc_segmenter.metrics import dice_per_class
from cmrqc_segmenter.postprocess import largest_connected_component
from cmrqc_segmenter.preprocess import (
    FieldGeometry,
    VolumeRejected,
    normalise_intensity,
    pixel_spacing_from_affine,
    slice_context_indices,
    to_native_grid,
    to_native_labels,
    to_network_grid,
    validate_volume,
)


def _round_trip(labels: np.ndarray, spacing: tuple[float, float], contract: InputContract):
    """Labels -> one-hot on the network grid -> back to the native grid -> argmax."""
    geometry = FieldGeometry.centred(labels.shape[1:], spacing, contract)
    onehot = torch.from_numpy(
        (labels[:, None] == np.arange(NUM_CLASSES)[None, :, None, None]).astype(np.float32)
    )
    on_network = F.grid_sample(
        onehot,
        geometry.sampling_grid().expand(labels.shape[0], -1, -1, -1),
        mode="bilinear",
        align_corners=True,
    )
    on_network[:, 0] += 1.0 - on_network.sum(dim=1)
    return to_native_grid(on_network, geometry).argmax(dim=1).numpy().astype(np.uint8)


def test_labels_survive_the_round_trip_to_the_network_grid_and_back(
    test_volumes: list[LabelledVolume],
) -> None:
    volume = test_volumes[0]
    back = _round_trip(volume.labels, volume.pixel_spacing_mm, InputContract())
    assert back.shape == volume.labels.shape
    scores = dice_per_class(back, volume.labels)
    assert min(scores["LV"], scores["LVM"], scores["RVC"]) > 0.95, scores


def test_labels_computed_only_under_the_field_equal_the_full_resampling() -> None:
    contract = InputContract(spacing_mm=1.5, size=32)
    probabilities = torch.softmax(
        torch.randn(3, 4, 32, 32, generator=torch.Generator().manual_seed(0)) * 5, dim=1
    )
    for centre in [(40.0, 50.0), (5.0, 90.0)]:  # inside, and half outside the image
        geometry = FieldGeometry.centred((80, 100), (1.0, 1.25), contract, centre=centre)
        full = to_native_grid(probabilities, geometry).argmax(dim=1).numpy()
        assert (to_native_labels(probabilities, geometry) == full).all()
        assert full.any() and (full == 0).any()


def test_the_network_grid_has_the_contract_spacing_and_is_centred_on_the_image() -> None:
    contract = InputContract(spacing_mm=1.5, size=160)
    geometry = FieldGeometry.centred((200, 300), (1.0, 2.0), contract)
    j, i = geometry.network_to_native(np.array([0.0, 159.0]), np.array([0.0, 159.0]))
    assert j[1] - j[0] == pytest.approx(159 * 1.5 / 1.0)
    assert i[1] - i[0] == pytest.approx(159 * 1.5 / 2.0)
    assert (j[0] + j[1]) / 2 == pytest.approx(99.5) and (i[0] + i[1]) / 2 == pytest.approx(149.5)
    v, u = geometry.native_to_network(j, i)
    assert np.allclose(v, [0, 159]) and np.allclose(u, [0, 159])


def test_network_input_has_the_slice_and_its_neighbours_as_channels() -> None:
    contract = InputContract(context_slices=1)
    volume = np.stack([np.full((64, 64), k, np.float32) for k in range(4)]) / 3.0
    geometry = FieldGeometry.centred((64, 64), (1.5, 1.5), contract)
    x = to_network_grid(volume, geometry, contract)
    assert x.shape == (4, 3, contract.size, contract.size)
    centre = contract.size // 2
    assert x[:, :, centre, centre].mul(3).round().tolist() == [
        [0, 0, 1],
        [0, 1, 2],
        [1, 2, 3],
        [2, 3, 3],
    ]
    assert slice_context_indices(1, 2).tolist() == [[0, 0, 0, 0, 0]]


def test_intensities_are_clipped_at_the_percentiles_and_scaled_to_the_unit_interval() -> None:
    rng = np.random.default_rng(0)
    volume = rng.normal(1000, 100, size=(3, 64, 64))
    volume[0, 0, 0] = 1e6  # an outlier must not squash the rest
    out = normalise_intensity(volume, (0.5, 99.5))
    assert out.dtype == np.float32 and out.min() == 0.0 and out.max() == 1.0
    assert 0.4 < float(np.median(out)) < 0.6


def test_pixel_spacing_is_read_from_the_affine_in_dicom_order(
    test_volumes: list[LabelledVolume],
) -> None:
    volume = test_volumes[0]
    assert pixel_spacing_from_affine(volume.affine) == pytest.approx(volume.pixel_spacing_mm)
    affine = np.diag([2.0, 0.5, 8.0, 1.0])  # columns 2 mm apart, rows 0.5 mm apart
    assert pixel_spacing_from_affine(affine) == pytest.approx((0.5, 2.0))


@pytest.mark.parametrize(
    ("volume", "spacing", "reason"),
    [
        (np.zeros((0, 64, 64)), (1.5, 1.5), "empty-volume"),
        (np.full((4, 64, 64), np.nan, np.float32), (1.5, 1.5), "non-finite-volume"),
        (np.full((4, 64, 64), 7, np.uint16), (1.5, 1.5), "constant-volume"),
        (np.ones((4, 8, 64)), (1.5, 1.5), "volume-too-small"),
        (np.ones((2, 2, 64, 64)), (1.5, 1.5), "not-a-volume"),
        (np.arange(4 * 64 * 64).reshape(4, 64, 64), (0.0, 1.5), "invalid-spacing"),
        (np.arange(4 * 64 * 64).reshape(4, 64, 64), (float("nan"), 1.5), "invalid-spacing"),
    ],
)
def test_impossible_volumes_are_rejected_with_a_reason(
    volume: np.ndarray, spacing: tuple[float, float], reason: str
) -> None:
    with pytest.raises(VolumeRejected) as error:
        validate_volume(volume, spacing)
    assert error.value.reason == reason


def test_a_few_non_finite_voxels_are_filled_not_rejected() -> None:
    volume = np.arange(2 * 32 * 32, dtype=np.float32).reshape(2, 32, 32)
    volume[0, 3, 3] = np.nan
    out = validate_volume(volume, (1.0, 1.0))
    assert np.isfinite(out).all() and out[0, 3, 3] == out[np.isfinite(volume)].min()


def test_a_two_dimensional_image_is_one_slice() -> None:
    out = validate_volume(np.arange(32 * 32).reshape(32, 32), (1.0, 1.0))
    assert out.shape == (1, 32, 32) and out.dtype == np.float32


def test_only_the_largest_3d_component_of_each_class_is_kept() -> None:
    labels = np.zeros((3, 20, 20), np.uint8)
    labels[0:3, 2:8, 2:8] = 1  # large LV spanning all slices
    labels[1, 15:17, 15:17] = 1  # stray LV blob
    labels[0, 10:12, 2:4] = 3  # two RV pieces of different sizes
    labels[2, 10:14, 10:14] = 3
    cleaned = largest_connected_component(labels)
    assert (cleaned == 1).sum() == 3 * 36
    assert (cleaned[1, 15:17, 15:17] == 0).all()
    assert (cleaned == 3).sum() == 16 and (cleaned[2, 10:14, 10:14] == 3).all()


def test_components_touching_diagonally_across_slices_are_one_structure() -> None:
    labels = np.zeros((2, 10, 10), np.uint8)
    labels[0, 2:4, 2:4] = 2
    labels[1, 4:6, 4:6] = 2  # shifted by one pixel diagonally (slice misalignment)
    assert (largest_connected_component(labels) == labels).all()
