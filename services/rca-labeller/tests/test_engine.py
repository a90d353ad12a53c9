"""The registration engine: pose search, known transforms recovered, B-splines, Dice counting."""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import ndimage

from cmrqc_rca_labeller.engine import (
    EngineConfig,
    ReferenceBank,
    bspline_basis,
    find_pose,
    initial_transforms,
    optimise,
    propagate,
    propagate_and_score,
    score,
)
from cmrqc_rca_labeller.prepare import prepare_reference, prepare_test
from cmrqc_rca_labeller.volume import CardiacVolume
from cmrqc_shared.datasets.splits import QC_TEST, RCA_REFERENCES
from cmrqc_shared.metrics import dice_per_class
from cmrqc_shared.synth import SynthConfig, render_study

ANGLE_DEG, SCALE, SHIFT_PX = 20.0, 1.1, (6.0, -5.0)


def _reference_volume() -> CardiacVolume:
    phase = render_study(RCA_REFERENCES.start + 7, SynthConfig.clean_config(), ("ED",)).phase("ED")
    return CardiacVolume(phase.image, phase.affine, phase.labels)


def _warp_inplane(volume: CardiacVolume) -> tuple[CardiacVolume, np.ndarray]:
    """The volume moved by a known similarity about its heart centre, in-plane.

    Returns the moved volume (image and labels) and the 2×2 linear part of the map from the
    original to the moved image, in (x, y) = (column, row) millimetres.
    """
    assert volume.labels is not None
    _, jj, ii = np.nonzero(volume.labels > 0)
    centre = np.array([jj.mean(), ii.mean()])  # (row, col)
    angle = math.radians(ANGLE_DEG)
    forward_xy = SCALE * np.array(
        [[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]]
    )
    forward_rc = forward_xy[::-1, ::-1]  # the same map acting on (row, col)
    inverse = np.linalg.inv(forward_rc)
    shift = np.array(SHIFT_PX)
    # output pixel p comes from input inverse @ (p - centre - shift) + centre
    offset = centre - inverse @ (centre + shift)
    image = np.stack(
        [
            ndimage.affine_transform(s.astype(np.float32), inverse, offset, order=1)
            for s in volume.image
        ]
    )
    labels = np.stack(
        [ndimage.affine_transform(s, inverse, offset, order=0) for s in volume.labels]
    )
    return CardiacVolume(image, volume.affine, labels.astype(np.uint8)), forward_xy


def test_registration_recovers_a_known_affine_transform_of_a_synthetic_image(
    fast_config: EngineConfig,
) -> None:
    original = _reference_volume()
    moved, forward = _warp_inplane(original)
    bank = ReferenceBank.build([prepare_reference(original, "original")], fast_config)
    assert moved.labels is not None
    test = prepare_test(moved, moved.labels)

    pose = find_pose(test, bank, fast_config)
    transforms = initial_transforms(bank, pose)
    for stage, coarse, iterations in (("affine", True, 40), ("slices", False, 20)):
        transforms = optimise(
            bank,
            transforms,
            test,
            coarse=coarse,
            iterations=iterations,
            stage=stage,
            config=fast_config,
        )
    scores = propagate_and_score(bank, transforms, test)

    recovered = transforms.matrix[0].numpy()  # reference field mm → test mm: the forward map
    assert np.abs(recovered - forward).max() < 0.04
    angle = math.degrees(math.atan2(recovered[1, 0], recovered[0, 0]))
    assert abs(angle - ANGLE_DEG) < 2.0
    dice = scores.dice[0]
    assert float(dice[4]) > 0.95 and float(dice[1]) > 0.93 and float(dice[2]) > 0.85


def test_pose_search_finds_the_heart_from_intensities_alone(
    small_bank: ReferenceBank, fast_config: EngineConfig
) -> None:
    phase = render_study(QC_TEST.start + 3, phases=("ED",)).phase("ED")
    empty = np.zeros_like(phase.labels)  # no segmentation at all: the pose cannot use it
    test = prepare_test(CardiacVolume(phase.image, phase.affine), empty)

    pose = find_pose(test, small_bank, fast_config)

    _, jj, ii = np.nonzero(phase.labels > 0)
    dy, dx = phase.pixel_spacing_mm
    true_x, true_y = (ii.mean() + 0.5) * dx, (jj.mean() + 0.5) * dy
    assert math.hypot(pose.centre_x_mm - true_x, pose.centre_y_mm - true_y) < 12.0


def test_the_bspline_basis_sums_to_one_over_its_span() -> None:
    basis = bspline_basis(64, 2.0, 7, 128.0, torch.device("cpu"))
    assert basis.shape == (64, 7)
    assert torch.allclose(basis.sum(1), torch.ones(64), atol=1e-5)


def test_dice_counting_matches_the_shared_dice_per_class(
    small_bank: ReferenceBank, fast_config: EngineConfig
) -> None:
    phase = render_study(QC_TEST.start + 5, phases=("ED",)).phase("ED")
    test = prepare_test(CardiacVolume(phase.image, phase.affine), phase.labels)
    transforms = initial_transforms(small_bank, find_pose(test, small_bank, fast_config))

    labels, covered = propagate(small_bank, transforms, test)
    no_unseen = torch.zeros(small_bank.size, 4, dtype=torch.float64)
    dice = score(small_bank, labels, covered, no_unseen, outside=False)

    for n in range(small_bank.size):
        planes = (small_bank.plane_ref == n) & covered
        expected = dice_per_class(labels[planes].numpy(), small_bank.labels[planes].numpy())
        got = dice[n].tolist()
        assert np.allclose(got, [expected.BG, expected.LV, expected.LVM, expected.RVC, expected.WH])
