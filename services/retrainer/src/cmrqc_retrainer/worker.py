"""Champion vs challenger: fine-tune on the labels, compare on the fixed holdout, promote or not.

One round (``Retrainer.run_once``), when at least ``min_new_labels`` training labels arrived
after the watermark and the holdout has ``min_holdout`` cases:

1. Snapshot: the newest ``max_training_labels`` training labels and every holdout label; the
   training labels are split again by series (a different hash) into fit (90 %) and
   validation (10 %) — validation picks the epoch and calibrates the intervals (for one view
   and for every averaged view count the champion carries, so that predictors serving N views
   accept it), so the holdout is used for nothing but the promotion decision.
2. Champion: the registry's promoted version (its artifact read from the blob store and checked
   against its hash) or, before any promotion, the initial model.
3. Challenger: a copy of the champion fine-tuned with the QC predictor's own training loop
   (``cmrqc_qc_predictor.training.fit_fast``) on the labels as targets.
4. Both predict the holdout; the challenger is registered with both models' holdout MAE, and
   promoted (``ModelPublished`` on the compacted models topic: every predictor hot-swaps) only
   if its whole-heart MAE is lower than the champion's by ``promote_margin`` — and, when a
   guard set is given, its guard-set WH MAE is not higher than the champion's by more than
   ``guard_margin`` (the holdout comes from the same stream as the training labels and cannot
   see what the stream lacks: a guard set of fixed ground truth catches forgetting);
   otherwise it is registered as rejected. Ground-truth holdout labels are preferred as the
   yardstick when there are ``min_holdout`` of them.
5. The watermark moves to the newest label used; a point joins the learning curve.

A failure anywhere leaves the champion serving: nothing is promoted before step 4 succeeded.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from cmrqc_qc_predictor.artifact import QcModel, artifact_bytes, load_artifact
from cmrqc_qc_predictor.conformal import ConformalCalibration
from cmrqc_qc_predictor.data import FastArrays, fast_arrays_from_cases
from cmrqc_qc_predictor.models import FAST_ARCHITECTURE, FastQcNet
from cmrqc_qc_predictor.prepare import InputError, check_pair, spacing_from_affine
from cmrqc_qc_predictor.scoring import mae_per_class
from cmrqc_qc_predictor.training import (
    fit_fast,
    predict_fast_arrays,
    predict_fast_arrays_dihedral,
)
from cmrqc_retrainer.labels import LabelledCase, LabelStore
from cmrqc_retrainer.settings import RetrainerSettings
from cmrqc_shared.blobs import BlobError, BlobStore
from cmrqc_shared.registry import ModelRegistry

logger = logging.getLogger(__name__)

VALIDATION_SALT = "retrainer-validation"


@dataclass(frozen=True)
class Decision:
    """What one round did."""

    registered_version: int
    promoted: bool
    reason: str
    champion_version: str
    champion_holdout_mae: dict[str, float]
    challenger_holdout_mae: dict[str, float]
    holdout_source: str
    training_labels: int
    holdout_labels: int
    skipped_labels: int
    watermark: int
    seconds: float
    champion_guard_mae: dict[str, float] | None = None
    challenger_guard_mae: dict[str, float] | None = None

    @property
    def serving_holdout_wh_mae(self) -> float:
        """Holdout WH MAE of the model that serves after this round."""
        serving = self.challenger_holdout_mae if self.promoted else self.champion_holdout_mae
        return serving["WH"]


def _in_validation(case: LabelledCase) -> bool:
    digest = hashlib.sha256(f"{VALIDATION_SALT}|{case.series_instance_uid}".encode()).digest()
    return digest[0] < 26  # about 10 %


def case_arrays(blobs: BlobStore, cases: list[LabelledCase]) -> tuple[FastArrays | None, int]:
    """Fast-model inputs of labelled ``cases`` and how many were skipped: cases whose blobs
    are gone or whose pair the predictor would refuse (logged)."""
    usable = []
    targets = []
    for case in cases:
        try:
            volume = blobs.get_array(case.volume)
            labels = blobs.get_array(case.labelmap)
            check_pair(volume, labels)
            row_mm, col_mm, slice_mm = spacing_from_affine(case.affine)
            if min(row_mm, col_mm, slice_mm) <= 0:
                raise InputError("invalid-spacing", f"spacing {row_mm, col_mm, slice_mm}")
        except (BlobError, InputError) as error:
            logger.warning(
                "label skipped: %s",
                error,
                extra={"segmentation_event_id": case.segmentation_event_id},
            )
            continue
        usable.append((volume, labels, (row_mm, col_mm), slice_mm))
        targets.append(case.targets())
    skipped = len(cases) - len(usable)
    if not usable:
        return None, skipped
    return fast_arrays_from_cases(usable, np.asarray(targets, np.float32)), skipped


class Retrainer:
    """Runs rounds against one label store and one registry (see the module docstring)."""

    def __init__(
        self,
        settings: RetrainerSettings,
        store: LabelStore,
        registry: ModelRegistry,
        blobs: BlobStore,
        initial: QcModel,
        guard: FastArrays | None = None,
    ) -> None:
        """``guard``: the fixed ground-truth cases no promotion may get worse on (see the
        module docstring); None: no guard."""
        if initial.architecture != FAST_ARCHITECTURE:
            raise ValueError(
                f"the retrainer fine-tunes {FAST_ARCHITECTURE}, not {initial.architecture}"
            )
        self.settings = settings
        self.store = store
        self.registry = registry
        self.blobs = blobs
        self.initial = initial
        self.guard = guard
        self._recover_watermark()

    def _recover_watermark(self) -> None:
        """A challenger registered just before a crash carries the watermark it trained to."""
        versions = self.registry.versions(self.settings.model_name)
        if versions:
            recorded = int(versions[-1].provenance.get("label_watermark", "0") or 0)
            self.store.set_watermark(recorded)

    def ready(self) -> bool:
        """Enough new training labels and a holdout worth comparing on."""
        return (
            self.store.new_count() >= self.settings.min_new_labels
            and self.store.counts()["holdout"] >= self.settings.min_holdout
        )

    def champion(self) -> tuple[QcModel, str]:
        """The serving model and its registry version (``initial`` before any promotion).

        Raises:
            RegistryError / BlobError / ArtifactError: the promoted artifact cannot be used
                (the round is abandoned; predictors keep what they serve).
        """
        current = self.registry.current(self.settings.model_name)
        if current is None:
            return self.initial, f"initial:{self.initial.version}"
        data = self.blobs.get(current.artifact)  # verifies size and SHA-256
        return load_artifact(data, sha256=current.artifact.sha256), str(current.version)

    def run_once(self) -> Decision | None:
        """One round if ``ready()``; None otherwise (or when too few usable labels remain)."""
        if not self.ready():
            return None
        started = time.monotonic()
        settings = self.settings
        watermark = self.store.latest_training_seq()
        training = self.store.training_cases(settings.max_training_labels)
        holdout = self.store.holdout_cases()
        truth = [c for c in holdout if c.source == "groundtruth"]
        holdout_source = "groundtruth" if len(truth) >= settings.min_holdout else "all labels"
        if holdout_source == "groundtruth":
            holdout = truth
        fit_cases = [c for c in training if not _in_validation(c)]
        val_cases = [c for c in training if _in_validation(c)] or fit_cases[
            -max(1, len(fit_cases) // 10) :
        ]
        fit_data, skipped_fit = case_arrays(self.blobs, fit_cases)
        val_data, skipped_val = case_arrays(self.blobs, val_cases)
        holdout_data, skipped_holdout = case_arrays(self.blobs, holdout)
        skipped = skipped_fit + skipped_val + skipped_holdout
        if fit_data is None or val_data is None or holdout_data is None:
            logger.warning("round abandoned: no usable labels", extra={"skipped": skipped})
            self.store.set_watermark(watermark)
            return None
        if len(holdout_data.targets) < settings.min_holdout:
            logger.warning("round postponed: holdout too small after skipping unusable labels")
            return None

        champion, champion_version = self.champion()
        champion_network = champion.network
        assert isinstance(champion_network, FastQcNet)
        champion_predicted = predict_fast_arrays(
            champion_network, holdout_data.crops, holdout_data.features
        )
        challenger = copy.deepcopy(champion_network)
        challenger, history, val_predicted, _ = fit_fast(
            challenger,
            fit_data,
            val_data,
            epochs=settings.epochs,
            batch_size=settings.batch_size,
            learning_rate=settings.learning_rate,
            progress=False,
            reference_loss=False,
        )
        challenger_predicted = predict_fast_arrays(
            challenger, holdout_data.crops, holdout_data.features
        )
        champion_mae = mae_per_class(champion_predicted, holdout_data.targets)
        challenger_mae = mae_per_class(challenger_predicted, holdout_data.targets)
        calibration = ConformalCalibration.fit(val_predicted, val_data.targets)
        # Predictors may serve the champion averaged over N views: calibrate the challenger for
        # every view count the champion carries, or they would refuse it (hot-swap).
        view_calibrations = {
            views: ConformalCalibration.fit(
                predict_fast_arrays_dihedral(
                    challenger, val_data.crops, val_data.features, views=views
                ),
                val_data.targets,
            )
            for views in champion.view_calibrations
        }
        better_by = champion_mae["WH"] - challenger_mae["WH"]
        promote = better_by > settings.promote_margin
        reason = (
            f"holdout WH MAE {challenger_mae['WH']:.4f} vs champion {champion_version} "
            f"{champion_mae['WH']:.4f} on {len(holdout_data.targets)} {holdout_source} cases "
            f"(margin {settings.promote_margin})"
        )
        champion_guard = challenger_guard = None
        if self.guard is not None:
            guard = self.guard
            champion_guard = mae_per_class(
                predict_fast_arrays(champion_network, guard.crops, guard.features), guard.targets
            )
            challenger_guard = mae_per_class(
                predict_fast_arrays(challenger, guard.crops, guard.features), guard.targets
            )
            forgets = challenger_guard["WH"] > champion_guard["WH"] + settings.guard_margin
            promote = promote and not forgets
            reason += (
                f"; guard set WH MAE {challenger_guard['WH']:.4f} vs "
                f"{champion_guard['WH']:.4f} on {len(guard.targets)} cases "
                f"(tolerance {settings.guard_margin}{', exceeded' if forgets else ''})"
            )
        created = datetime.now(UTC)
        provenance = {
            "trained_from": champion_version,
            "training_labels": str(len(fit_data.targets)),
            "validation_labels": str(len(val_data.targets)),
            "holdout_labels": str(len(holdout_data.targets)),
            "holdout_source": holdout_source,
            "label_sources": json.dumps(
                {s: sum(c.source == s for c in training) for s in ("groundtruth", "rca")}
            ),
            "label_watermark": str(watermark),
            "epochs": str(len(history)),
            "reason": reason,
        }
        version = f"retrained-{created:%Y%m%d-%H%M%S}"
        card = {
            "version": version,
            "provenance": provenance,
            "holdout_mae": {"challenger": challenger_mae, "champion": champion_mae},
            "validation": {"mae": history[-1]["val_mae"] if history else {}},
        }
        data = artifact_bytes(
            challenger,
            architecture=champion.architecture,
            calibration=calibration,
            name=settings.model_name,
            version=version,
            options=champion.options,
            card=card,
            created_at=created.isoformat(timespec="seconds"),
            view_calibrations=view_calibrations,
        )
        metrics = {f"holdout_mae_{k}": v for k, v in challenger_mae.items()}
        metrics.update({f"champion_holdout_mae_{k}": v for k, v in champion_mae.items()})
        if challenger_guard is not None and champion_guard is not None:
            metrics.update({f"guard_mae_{k}": v for k, v in challenger_guard.items()})
            metrics.update({f"champion_guard_mae_{k}": v for k, v in champion_guard.items()})
        entry = self.registry.register(
            settings.model_name,
            data,
            architecture=champion.architecture,
            metrics=metrics,
            provenance=provenance,
        )
        if promote:
            self.registry.promote(settings.model_name, entry.version, reason)
        else:
            self.registry.reject(settings.model_name, entry.version, "not better: " + reason)
        self.store.set_watermark(watermark)
        decision = Decision(
            registered_version=entry.version,
            promoted=promote,
            reason=reason,
            champion_version=champion_version,
            champion_holdout_mae=champion_mae,
            challenger_holdout_mae=challenger_mae,
            holdout_source=holdout_source,
            training_labels=len(fit_data.targets),
            holdout_labels=len(holdout_data.targets),
            skipped_labels=skipped,
            watermark=watermark,
            seconds=time.monotonic() - started,
            champion_guard_mae=champion_guard,
            challenger_guard_mae=challenger_guard,
        )
        self.store.append_curve(json.dumps(asdict(decision) | {"at": created.isoformat()}))
        logger.info(
            "challenger promoted" if promote else "challenger rejected",
            extra={"version": entry.version, "reason": reason},
        )
        return decision


def curve_points(store: LabelStore) -> list[dict[str, Any]]:
    """The learning curve: one point per round, oldest first."""
    return [json.loads(raw) for raw in store.curve()]
