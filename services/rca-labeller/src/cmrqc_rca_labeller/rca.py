"""Reverse Classification Accuracy: a segmentation's quality estimated without its ground truth.

The test image with its predicted segmentation is used as a single atlas: the image is
registered to every reference image, the segmentation is carried along onto the reference,
and the Dice per class against the reference's verified labels is measured. If the prediction
is good, some reference of similar anatomy will receive a good propagated segmentation; if it
is bad, none will. The estimate is the maximum over references, per class (Valindria et al.
2017; Robinson et al. 2017), with the mean of the top few as a steadier second opinion.

``RcaEstimator`` holds a reference bank and answers ``estimate(image, segmentation)``; it can
be called any number of times and from one thread at a time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from numpy.typing import NDArray

from cmrqc_rca_labeller.calibration import RcaCalibration, kept_statistics
from cmrqc_rca_labeller.engine import (
    CLASS_NAMES,
    EngineConfig,
    Pose,
    ReferenceBank,
    Transforms,
    find_pose,
    initial_transforms,
    optimise,
    propagate,
    score,
    similarity,
    unseen_segmentation,
)
from cmrqc_rca_labeller.prepare import PreparedTest, prepare_test, test_to
from cmrqc_rca_labeller.volume import CardiacVolume
from cmrqc_shared.events import ClassScores, ReferenceScore

logger = logging.getLogger(__name__)


def _scores(values: torch.Tensor | NDArray[np.floating]) -> ClassScores:
    numbers = [float(min(1.0, max(0.0, float(v)))) for v in values]
    return ClassScores(**dict(zip(CLASS_NAMES, numbers, strict=True)))


@dataclass(frozen=True)
class ReferenceField:
    """For figures: the middle slice of a reference's optimisation window, its verified
    labels and the test segmentation propagated onto it."""

    reference_id: str
    image: NDArray[np.float32]
    labels: NDArray[np.uint8]
    propagated: NDArray[np.uint8]


@dataclass(frozen=True)
class RcaResult:
    """One RCA estimate.

    Attributes:
        estimated_dsc: per class, the maximum Dice over the registered references (the
            ``config.score_keep`` best registered of them).
        top_k_mean_dsc: per class, the mean of the ``top_k`` best of those references' Dice.
        top_references: the best of those references by whole-heart Dice, with all their
            scores.
        per_reference: every registered reference's scores: those the estimate is taken
            over first, each group best WH first.
        references_screened: references scored at their initial pose (the whole set).
        references_registered: references taken through the full registration.
        seconds: wall-clock time of the estimate, s.
        pose: where the pose search found the heart in the test stack.
        stage_seconds: wall-clock time of each stage, s (prepare, pose, screen, coarse,
            slices, ffd, score).
        fields: the best references' middle slices, when asked for (``keep_fields``).
    """

    estimated_dsc: ClassScores
    top_k_mean_dsc: ClassScores
    top_references: list[ReferenceScore]
    per_reference: list[ReferenceScore]
    references_screened: int
    references_registered: int
    seconds: float
    pose: Pose
    stage_seconds: dict[str, float]
    fields: list[ReferenceField]
    calibrated_dsc: ClassScores | None = None
    """``estimated_dsc`` through the reference set's correction (``calibration``)."""
    reference_similarity: dict[str, float] = field(default_factory=dict)
    """Each registered reference's image similarity (fine-level weighted NCC) after the last
    stage, by reference id: how well the registration matched the images, independent of
    the segmentation (for analysing estimators other than the maximum)."""
    kept_statistics: dict[str, float] = field(default_factory=dict)
    """``calibration.kept_statistics`` of the references the estimate is taken over: what a
    calibration may read besides the maximum (top-k mean, mean, spread, similarity)."""

    def as_dict(self) -> dict[str, object]:
        """JSON-ready summary (what ``cmrqc rca`` prints)."""
        return {
            "estimated_dsc": self.estimated_dsc.model_dump(),
            "top_k_mean_dsc": self.top_k_mean_dsc.model_dump(),
            "calibrated_dsc": self.calibrated_dsc.model_dump() if self.calibrated_dsc else None,
            "top_references": [r.model_dump() for r in self.top_references],
            "references_screened": self.references_screened,
            "references_registered": self.references_registered,
            "seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True)
class Registration:
    """A test image registered to the references (``RcaEstimator.register``).

    Attributes:
        pose: where the pose search found the heart in the test stack.
        bank: the references taken through the full registration.
        transforms: their transforms (reference field → test).
        similarity: each one's image similarity after the last stage (fine-level weighted NCC).
    """

    pose: Pose
    bank: ReferenceBank
    transforms: Transforms
    similarity: torch.Tensor


class RcaEstimator:
    """RCA against one reference bank.

    Args:
        bank: the prepared reference set (``ReferenceBank.build``).
        config: engine settings; its ``device`` should match the bank's.
        calibration: the reference set's correction (``calibration_for``), if any.
    """

    def __init__(
        self,
        bank: ReferenceBank,
        config: EngineConfig | None = None,
        calibration: RcaCalibration | None = None,
    ) -> None:
        self.bank = bank
        self.config = config or EngineConfig()
        self.calibration = calibration

    def register(
        self,
        test: PreparedTest,
        *,
        max_references: int | None = None,
        lap: Callable[[str], None] | None = None,
    ) -> Registration:
        """Register a prepared test image to the references: pose search, screening, coarse
        affine, then the best ``refine_keep`` (at most ``max_references``) through the fine
        stages. ``lap(stage)`` is called after each stage (pose, screen, coarse, slices, ffd)."""
        config = self.config
        bank = self.bank

        def done(stage: str) -> None:
            if lap is not None:
                lap(stage)

        with torch.no_grad():
            pose = find_pose(test, bank, config)
            done("pose")
            screened = torch.stack(
                [
                    similarity(bank, initial_transforms(bank, pose, scale), test, coarse=True)
                    for scale in config.screen_scales
                ],
                1,
            )  # [K, scales]
        best_ncc, best_scale = screened.max(1)
        keep = best_ncc.argsort(descending=True)[: config.screen_keep]
        screened_bank = bank.subset(keep)
        scale = torch.tensor(config.screen_scales, device=bank.device)[best_scale[keep]]
        transforms = initial_transforms(screened_bank, pose, scale)
        done("screen")
        transforms = optimise(
            screened_bank,
            transforms,
            test,
            coarse=True,
            iterations=config.coarse_iterations,
            stage="affine",
            config=config,
        )
        with torch.no_grad():
            coarse_ncc = similarity(screened_bank, transforms, test, coarse=True)
        done("coarse")
        refine = min(max_references or config.refine_keep, config.refine_keep)
        chosen = coarse_ncc.argsort(descending=True)[:refine]
        refined_bank = screened_bank.subset(chosen)
        transforms = transforms.select(chosen, screened_bank.plane_indices(chosen))
        for stage, iterations in (
            ("slices", config.fine_iterations),
            ("ffd", config.ffd_iterations),
        ):
            transforms = optimise(
                refined_bank,
                transforms,
                test,
                coarse=False,
                iterations=iterations,
                stage=stage,
                config=config,
            )
            done(stage)
        with torch.no_grad():
            final_similarity = similarity(refined_bank, transforms, test, coarse=False)
        return Registration(pose, refined_bank, transforms, final_similarity)

    def estimate(
        self,
        image: CardiacVolume,
        segmentation: NDArray[np.uint8],
        *,
        max_references: int | None = None,
        top_references: int = 5,
        keep_fields: bool = False,
    ) -> RcaResult:
        """Estimate the per-class Dice of ``segmentation`` (a labelmap on ``image``'s grid).

        Args:
            image: the test image (its own ``labels`` are ignored).
            segmentation: uint8 labelmap ``[k, j, i]`` (0 BG, 1 LV, 2 LVM, 3 RVC).
            max_references: take at most this many references through the full registration
                (a time budget); default ``config.refine_keep``.
            top_references: how many best references to list in the result.
            keep_fields: also return, for those references, the middle slice of the
                reference image, its labels and the propagated segmentation (figures).

        Raises:
            ValueError: the segmentation does not match the image.
        """
        started = time.perf_counter()
        stages: dict[str, float] = {}
        clock = [started]

        def lap(name: str) -> None:
            now = time.perf_counter()
            stages[name] = now - clock[0]
            clock[0] = now

        config = self.config
        bank = self.bank
        test = test_to(prepare_test(image, segmentation, grid_mm=bank.grid_mm), bank.device)
        lap("prepare")
        registration = self.register(test, max_references=max_references, lap=lap)
        refined_bank, transforms = registration.bank, registration.transforms
        final_similarity = registration.similarity
        with torch.no_grad():
            propagated, covered = propagate(refined_bank, transforms, test)
            unseen = unseen_segmentation(refined_bank, transforms, test)
            dice = score(refined_bank, propagated, covered, unseen)  # [M, 5]
        lap("score")
        # the estimate is taken over the best registered references (config.score_keep)
        kept = list(range(dice.shape[0]))
        if 0 < config.score_keep < dice.shape[0]:
            kept = final_similarity.argsort(descending=True)[: config.score_keep].tolist()
        scored = dice[kept]
        kept_set = set(kept)
        # best WH first, those the estimate is taken over before the others (a stable sort)
        order = sorted(
            dice[:, 4].argsort(descending=True).tolist(), key=lambda i: i not in kept_set
        )
        per_reference = [
            ReferenceScore(reference_id=refined_bank.ids[i], dsc=_scores(dice[i])) for i in order
        ]
        fields: list[ReferenceField] = []
        if keep_fields:
            window = refined_bank.window_px
            lo = (refined_bank.field_px - window) // 2
            for i in order[:top_references]:
                planes = torch.nonzero(refined_bank.plane_ref == i).squeeze(1)
                middle = planes[len(planes) // 2]
                crop = (middle, slice(lo, lo + window), slice(lo, lo + window))
                fields.append(
                    ReferenceField(
                        reference_id=refined_bank.ids[i],
                        image=refined_bank.fine.image_plane(int(middle)).cpu().numpy(),
                        labels=refined_bank.labels[crop].cpu().numpy(),
                        propagated=propagated[crop].cpu().numpy(),
                    )
                )
        k = min(config.top_k, scored.shape[0])
        top_mean = scored.sort(0, descending=True).values[:k].mean(0)
        estimated = _scores(scored.max(0).values)
        statistics = kept_statistics(
            scored.double().cpu().numpy(),
            final_similarity[kept].double().cpu().numpy(),
            config.top_k,
        )
        result = RcaResult(
            estimated_dsc=estimated,
            top_k_mean_dsc=_scores(top_mean),
            top_references=per_reference[:top_references],
            per_reference=per_reference,
            references_screened=bank.size,
            references_registered=len(per_reference),
            seconds=time.perf_counter() - started,
            pose=registration.pose,
            stage_seconds=stages,
            fields=fields,
            calibrated_dsc=(
                self.calibration.apply(estimated, statistics) if self.calibration else None
            ),
            reference_similarity={
                refined_bank.ids[i]: float(value)
                for i, value in enumerate(final_similarity.tolist())
            },
            kept_statistics=statistics,
        )
        logger.debug(
            "rca estimate",
            extra={
                "wh_estimate": result.estimated_dsc.WH,
                "seconds": result.seconds,
                "references": result.references_registered,
            },
        )
        return result
