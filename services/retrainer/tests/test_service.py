"""The retrainer through Kafka: RCA labels and ground truth in, a promoted model announced."""

from __future__ import annotations

import numpy as np
import pytest

from cmrqc_retrainer.service import RetrainerService
from cmrqc_retrainer.settings import RetrainerSettings
from cmrqc_shared.blobs import BlobStore, open_blob_store
from cmrqc_shared.bus.publisher import EventPublisher, read_events
from cmrqc_shared.events import (
    CardiacPhase,
    ClassScores,
    DeadLetter,
    GroundTruthSubmitted,
    ModelPublished,
    ProducerInfo,
    RcaLabel,
)
from cmrqc_shared.settings import BlobSettings, KafkaSettings, RunnerSettings
from cmrqc_shared.topics import ensure_namespaced_topics

from .conftest import tiny_model

pytestmark = [pytest.mark.kafka, pytest.mark.redis]

PRODUCER = ProducerInfo(service="test", version="0")


def _events(blobs: BlobStore, cases: list) -> list[object]:  # type: ignore[type-arg]
    events: list[object] = []
    for index, (image, labels, affine, truth) in enumerate(cases):
        volume, labelmap = blobs.put_array(image), blobs.put_array(labels)
        common = {
            "producer": PRODUCER,
            "series_instance_uid": f"1.2.9.{index}",
            "segmentation_event_id": f"seg-{index}",
            "volume": volume,
            "labelmap": labelmap,
            "affine": affine,
        }
        if index % 2:  # half ground truth ...
            events.append(
                GroundTruthSubmitted.create(
                    derived_from=("gt", str(index)),
                    reference_labelmap=labelmap,  # (true_dsc given: not recomputed)
                    annotator="annotator-7",
                    true_dsc=ClassScores(**truth),
                    **common,
                )
            )
        else:  # ... half RCA estimates
            events.append(
                RcaLabel.create(
                    derived_from=("rca", str(index)),
                    cardiac_phase=CardiacPhase.ED,
                    estimated_dsc=ClassScores(**truth),
                    reference_set="test-set",
                    references_used=12,
                    seconds=1.0,
                    **common,
                )
            )
    return events


def test_labels_from_both_topics_train_a_challenger_that_is_promoted_and_announced(
    kafka: KafkaSettings,
    redis_url: str,
    prefix: str,
    synthetic_cases: list,  # type: ignore[type-arg]
) -> None:
    ensure_namespaced_topics(kafka)
    events = _events(open_blob_store(redis_url), synthetic_cases)  # the store the service reads
    no_geometry = RcaLabel.model_validate(
        {**events[0].model_dump(), "affine": None, "event_id": "no-geometry"}  # type: ignore[attr-defined]
    )
    with EventPublisher(kafka) as publisher:
        for event in [*events, no_geometry]:
            publisher.publish(event)  # type: ignore[arg-type]
    settings = RetrainerSettings(
        kafka=kafka,
        blobs=BlobSettings(url=redis_url),
        store_url=redis_url,
        store_prefix=f"{prefix}:retrainer",
        registry_prefix=f"{prefix}:models:",
        runner=RunnerSettings(group_id=f"retrainer-{prefix}", instance_id="t0", health_port=0),
        min_new_labels=10,
        min_holdout=4,
        holdout_fraction=0.3,
        epochs=6,
        batch_size=8,
        learning_rate=5e-3,
        check_interval_s=0.5,
    )
    service = RetrainerService(settings, initial=tiny_model(), serve_observability=False)
    try:
        decisions = service.run(max_rounds=1, timeout_s=120)
        counts = service.store.counts()
    finally:
        service.close()
    assert len(decisions) == 1 and decisions[0].promoted, decisions
    assert counts["train"] + counts["holdout"] == len(synthetic_cases)
    (announced,) = read_events(kafka, ModelPublished, expected=1)
    assert announced.model_name == "qc-predictor"
    assert announced.provenance["holdout_source"] in {"groundtruth", "all labels"}
    (letter,) = read_events(kafka, DeadLetter, expected=1)
    assert letter.reason == "missing-geometry"
    assert np.isfinite(decisions[0].serving_holdout_wh_mae)
