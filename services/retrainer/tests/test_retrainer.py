"""Champion vs challenger against real Redis and Kafka: the safety rules, each able to fail."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis

from cmrqc_qc_predictor.artifact import load_artifact
from cmrqc_retrainer.labels import LabelStore
from cmrqc_retrainer.settings import RetrainerSettings
from cmrqc_retrainer.worker import Retrainer, case_arrays, curve_points
from cmrqc_shared.blobs import BlobCorruptedError, BlobStore
from cmrqc_shared.bus.publisher import EventPublisher, read_events
from cmrqc_shared.events import ModelPublished, ProducerInfo
from cmrqc_shared.registry import ModelRegistry
from cmrqc_shared.settings import KafkaSettings
from cmrqc_shared.topics import ensure_namespaced_topics

from .conftest import labelled, tiny_model

pytestmark = [pytest.mark.kafka, pytest.mark.redis]

SETTINGS = RetrainerSettings(
    min_new_labels=10,
    min_holdout=4,
    epochs=6,
    batch_size=8,
    learning_rate=5e-3,
    promote_margin=0.01,
)


@pytest.fixture
def registry(
    kafka: KafkaSettings, redis_url: str, prefix: str, blobs: BlobStore
) -> Iterator[ModelRegistry]:
    ensure_namespaced_topics(kafka)
    with EventPublisher(kafka) as publisher:
        yield _registry(redis_url, blobs, publisher, f"{prefix}:models:")


def _registry(
    redis_url: str, blobs: BlobStore, publisher: EventPublisher | None, key_prefix: str
) -> ModelRegistry:
    return ModelRegistry(
        redis.Redis.from_url(redis_url),
        blobs,
        publisher,
        actor=ProducerInfo(service="retrainer-test", version="0"),
        key_prefix=key_prefix,
    )


def _fill(store: LabelStore, blobs: BlobStore, cases: list) -> None:  # type: ignore[type-arg]
    """Every case labelled with its true Dice, as an annotator's ground truth."""
    for index, case in enumerate(cases):
        store.record(labelled(blobs, case, index, source="groundtruth"))


def test_a_better_challenger_is_promoted_and_announced(
    store: LabelStore,
    blobs: BlobStore,
    registry: ModelRegistry,
    kafka: KafkaSettings,
    synthetic_cases: list,  # type: ignore[type-arg]
) -> None:
    _fill(store, blobs, synthetic_cases)
    trainer = Retrainer(SETTINGS, store, registry, blobs, tiny_model(views=(2, 8)))
    assert trainer.ready()
    decision = trainer.run_once()
    assert decision is not None and decision.promoted, decision
    assert decision.challenger_holdout_mae["WH"] < decision.champion_holdout_mae["WH"] - 0.01
    assert decision.holdout_source == "groundtruth"
    current = registry.current("qc-predictor")
    assert current is not None and current.version == decision.registered_version
    (announced,) = read_events(kafka, ModelPublished, expected=1)
    assert announced.version == str(decision.registered_version)
    assert announced.artifact.sha256 == current.artifact.sha256
    # Calibrated anew for the views the champion could be served with, on the validation labels.
    promoted = load_artifact(blobs.get(current.artifact))
    assert sorted(promoted.view_calibrations) == [2, 8]
    for calibration in promoted.view_calibrations.values():
        assert calibration.size == promoted.calibration.size
        assert not np.allclose(calibration.residuals, 0.1)  # not the champion's
    assert not np.array_equal(
        promoted.view_calibrations[8].residuals, promoted.calibration.residuals
    )
    assert not trainer.ready()  # the labels it used are behind the watermark
    assert curve_points(store)[-1]["promoted"] is True


def test_a_worse_challenger_is_never_promoted(
    store: LabelStore,
    blobs: BlobStore,
    registry: ModelRegistry,
    kafka: KafkaSettings,
    synthetic_cases: list,  # type: ignore[type-arg]
) -> None:
    _fill(store, blobs, synthetic_cases)
    first = Retrainer(SETTINGS, store, registry, blobs, tiny_model()).run_once()
    assert first is not None and first.promoted
    # New RCA labels that invert the truth: the challenger learns nonsense (the holdout keeps
    # its annotators' ground truth, which outranks RCA as the yardstick).
    for index, case in enumerate(synthetic_cases, start=100):
        wrong = {k: 1.0 - v for k, v in case[3].items()}
        store.record(labelled(blobs, case, index, source="rca", dsc=wrong))
    trainer = Retrainer(
        SETTINGS.model_copy(update={"max_training_labels": 25}),
        store,
        registry,
        blobs,
        tiny_model(),
    )
    second = trainer.run_once()
    assert second is not None and not second.promoted, second
    assert registry.current("qc-predictor").version == first.registered_version  # type: ignore[union-attr]
    assert registry.get("qc-predictor", second.registered_version).state == "rejected"
    assert second.holdout_source == "groundtruth"
    assert len(read_events(kafka, ModelPublished, expected=2, timeout_s=5)) == 1


def test_a_champion_whose_artifact_was_tampered_with_stops_the_round_not_the_model(
    store: LabelStore,
    blobs: BlobStore,
    registry: ModelRegistry,
    redis_url: str,
    prefix: str,
    synthetic_cases: list,  # type: ignore[type-arg]
) -> None:
    _fill(store, blobs, synthetic_cases)
    first = Retrainer(SETTINGS, store, registry, blobs, tiny_model()).run_once()
    assert first is not None and first.promoted
    champion = registry.current("qc-predictor")
    assert champion is not None
    redis.Redis.from_url(redis_url).set(f"{prefix}:blob:{champion.artifact.sha256}", b"junk")
    for index, case in enumerate(synthetic_cases, start=200):
        store.record(labelled(blobs, case, index, source="groundtruth"))
    with pytest.raises(BlobCorruptedError):
        Retrainer(SETTINGS, store, registry, blobs, tiny_model()).run_once()
    assert registry.current("qc-predictor").version == champion.version  # type: ignore[union-attr]
    assert len(registry.versions("qc-predictor")) == 1  # nothing was registered


def test_a_trainer_that_died_after_registering_does_not_train_the_same_labels_again(
    store: LabelStore,
    blobs: BlobStore,
    registry: ModelRegistry,
    redis_url: str,
    prefix: str,
    synthetic_cases: list,  # type: ignore[type-arg]
) -> None:
    _fill(store, blobs, synthetic_cases)
    decision = Retrainer(SETTINGS, store, registry, blobs, tiny_model()).run_once()
    assert decision is not None
    # The crash: the watermark write never happened.
    redis.Redis.from_url(redis_url).delete(f"{prefix}:labels:watermark")
    assert store.new_count() > 0
    restarted = Retrainer(SETTINGS, store, registry, blobs, tiny_model())
    assert store.watermark() == decision.watermark
    assert not restarted.ready() and restarted.run_once() is None
    assert np.isfinite(decision.serving_holdout_wh_mae)


def test_a_challenger_that_forgets_the_guard_set_is_never_promoted(
    store: LabelStore,
    blobs: BlobStore,
    registry: ModelRegistry,
    redis_url: str,
    prefix: str,
    synthetic_cases: list,  # type: ignore[type-arg]
) -> None:
    """Training labels and holdout from one skewed stream (here: every label inverted) agree
    with each other, so the holdout cannot see what the challenger unlearns; the guard set's
    fixed ground truth can. Without the guard the same challenger is promoted."""
    control = LabelStore.from_url(redis_url, f"{prefix}:control", store.holdout_fraction)
    for index, case in enumerate(synthetic_cases):
        skewed = {k: 1.0 - v for k, v in case[3].items()}
        for labels in (store, control):
            labels.record(labelled(blobs, case, index, source="groundtruth", dsc=skewed))
    guard, skipped = case_arrays(
        blobs,
        [
            labelled(blobs, case, 500 + index, source="groundtruth")
            for index, case in enumerate(synthetic_cases[::2])
        ],
    )
    assert guard is not None and skipped == 0
    guarded = Retrainer(SETTINGS, store, registry, blobs, tiny_model(), guard=guard).run_once()
    assert guarded is not None and not guarded.promoted, guarded
    assert guarded.challenger_holdout_mae["WH"] < guarded.champion_holdout_mae["WH"] - 0.01
    assert guarded.challenger_guard_mae is not None and guarded.champion_guard_mae is not None
    assert guarded.challenger_guard_mae["WH"] > guarded.champion_guard_mae["WH"] + 0.01
    assert "exceeded" in guarded.reason
    assert registry.current("qc-predictor") is None  # the initial model keeps serving

    # The same labels, no guard (and a registry of its own, whose watermark is still 0): the
    # holdout alone promotes the same kind of challenger.
    control_registry = _registry(redis_url, blobs, None, f"{prefix}:control-models:")
    unguarded = Retrainer(SETTINGS, control, control_registry, blobs, tiny_model()).run_once()
    control.close()
    assert unguarded is not None and unguarded.promoted, unguarded


def test_the_guard_set_is_read_from_a_qc_dataset_and_a_bad_path_stops_the_start(
    tmp_path: Path,
) -> None:
    from cmrqc_retrainer.service import load_guard_set

    from .test_curve import _tiny_dataset

    assert load_guard_set(RetrainerSettings()) is None
    _tiny_dataset(tmp_path / "ds", tmp_path / "labels.jsonl")
    guard = load_guard_set(RetrainerSettings(guard_set=str(tmp_path / "ds"), guard_split="val"))
    assert guard is not None and len(guard.targets) > 0
    assert np.all((guard.targets >= 0) & (guard.targets <= 1))
    with pytest.raises((FileNotFoundError, ValueError)):
        load_guard_set(RetrainerSettings(guard_set=str(tmp_path / "missing")))
