"""The classical baseline: RCA one reference at a time with SimpleITK (the way it is usually
done, and how the published RCA timings were obtained with similar toolkits).

Per pair: both images are cropped to ``crop_mm`` in-plane around the heart (the reference's
labelled heart; the test segmentation's centroid — whole-FOV registration lets the body
dominate and fails), then the test crop (moving) is registered to the reference crop
(fixed) in 3D physical coordinates — centres aligned, an affine stage (Mattes mutual
information, 50 bins, 20 % random sampling, regular-step gradient descent, 100 iterations,
three levels with shrink 4/2/1 and smoothing 2/1/0 voxels) and a B-spline stage (mesh
6×6×3, L-BFGS-B, 50 iterations per level, two levels) — and the test segmentation is
resampled onto the reference (nearest neighbour) and scored with
``cmrqc_shared.metrics.dice_per_class`` on the reference crop. Needs the ``baseline`` extra
(SimpleITK).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from cmrqc_rca_labeller.volume import CardiacVolume
from cmrqc_shared.events import ClassScores
from cmrqc_shared.metrics import dice_per_class


@dataclass(frozen=True)
class PairResult:
    """One baseline registration: the propagated segmentation's Dice, and its cost."""

    dice: ClassScores
    seconds: float
    affine_seconds: float
    bspline_seconds: float


def _to_sitk(array: NDArray[Any], affine: NDArray[np.float64], pixel: Any) -> Any:
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(array))  # [k, j, i] → index (i, j, k)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(v) for v in affine[:3, 3]])
    image.SetDirection([float(v) for v in (affine[:3, :3] / spacing).ravel()])
    return sitk.Cast(image, pixel)


def heart_crop(
    volume: CardiacVolume, mask: NDArray[np.bool_], crop_mm: float
) -> tuple[CardiacVolume, tuple[slice, slice]]:
    """``volume`` cropped in-plane to ``crop_mm`` around the centroid of ``mask`` (the image
    centre if empty), with the affine moved to the crop; also the (rows, cols) slices."""
    _, dy, dx = volume.spacing_mm
    rows, cols = volume.image.shape[1:]
    if mask.any():
        _, jj, ii = np.nonzero(mask)
        cj, ci = float(jj.mean()), float(ii.mean())
    else:
        cj, ci = rows / 2, cols / 2
    hj, hi = crop_mm / 2 / dy, crop_mm / 2 / dx
    j0, j1 = max(0, round(cj - hj)), min(rows, round(cj + hj))
    i0, i1 = max(0, round(ci - hi)), min(cols, round(ci + hi))
    affine = volume.affine.copy()
    affine[:3, 3] = volume.affine[:3, :3] @ np.array([i0, j0, 0]) + volume.affine[:3, 3]
    labels = volume.labels[:, j0:j1, i0:i1] if volume.labels is not None else None
    return CardiacVolume(volume.image[:, j0:j1, i0:i1], affine, labels), (
        slice(j0, j1),
        slice(i0, i1),
    )


def register_pair(
    test: CardiacVolume,
    segmentation: NDArray[np.uint8],
    reference: CardiacVolume,
    *,
    threads: int = 2,
    crop_mm: float = 160.0,
) -> PairResult:
    """Register ``test`` to ``reference`` (affine, then B-spline) and score the propagated
    segmentation against the reference's labels.

    Raises:
        ValueError: the reference has no labels.
    """
    import SimpleITK as sitk

    if reference.labels is None:
        raise ValueError("the reference needs labels")
    started = time.perf_counter()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    reference, _ = heart_crop(reference, reference.labels > 0, crop_mm)
    test, (rows, cols) = heart_crop(test, segmentation > 0, crop_mm)
    segmentation = segmentation[:, rows, cols]
    assert reference.labels is not None
    fixed = _to_sitk(reference.image, reference.affine, sitk.sitkFloat32)
    moving = _to_sitk(test.image, test.affine, sitk.sitkFloat32)

    initial = sitk.CenteredTransformInitializer(
        fixed, moving, sitk.AffineTransform(3), sitk.CenteredTransformInitializerFilter.GEOMETRY
    )
    affine = sitk.ImageRegistrationMethod()
    affine.SetMetricAsMattesMutualInformation(numberOfHistogramBins=50)
    affine.SetMetricSamplingStrategy(affine.RANDOM)
    affine.SetMetricSamplingPercentage(0.2, seed=1)
    affine.SetInterpolator(sitk.sitkLinear)
    affine.SetOptimizerAsRegularStepGradientDescent(
        learningRate=1.0, minStep=1e-4, numberOfIterations=100, relaxationFactor=0.5
    )
    affine.SetOptimizerScalesFromPhysicalShift()
    affine.SetShrinkFactorsPerLevel([4, 2, 1])
    affine.SetSmoothingSigmasPerLevel([2, 1, 0])
    affine.SetInitialTransform(initial, inPlace=False)
    affine_transform = affine.Execute(fixed, moving)
    affine_done = time.perf_counter()

    mesh = sitk.BSplineTransformInitializer(fixed, [6, 6, 3])
    deformable = sitk.ImageRegistrationMethod()
    deformable.SetMetricAsMattesMutualInformation(numberOfHistogramBins=50)
    deformable.SetMetricSamplingStrategy(deformable.RANDOM)
    deformable.SetMetricSamplingPercentage(0.2, seed=1)
    deformable.SetInterpolator(sitk.sitkLinear)
    deformable.SetOptimizerAsLBFGSB(
        gradientConvergenceTolerance=1e-5, numberOfIterations=50, maximumNumberOfCorrections=5
    )
    deformable.SetShrinkFactorsPerLevel([2, 1])
    deformable.SetSmoothingSigmasPerLevel([1, 0])
    deformable.SetMovingInitialTransform(affine_transform)
    deformable.SetInitialTransform(mesh, inPlace=True)
    deformable.Execute(fixed, moving)
    bspline_done = time.perf_counter()
    composite = sitk.CompositeTransform([affine_transform, mesh])

    seg = _to_sitk(segmentation, test.affine, sitk.sitkUInt8)
    propagated = sitk.Resample(seg, fixed, composite, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    dice = dice_per_class(sitk.GetArrayFromImage(propagated), reference.labels)
    return PairResult(
        dice=dice,
        seconds=time.perf_counter() - started,
        affine_seconds=affine_done - started,
        bspline_seconds=bspline_done - affine_done,
    )
