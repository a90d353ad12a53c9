"""Event contracts: deterministic ids, validation, compatibility rules, no identifiers."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from cmrqc_shared.events import (
    EVENT_TYPES,
    ClassScores,
    DeadLetter,
    ModelPublished,
    ProducerInfo,
    VolumeReady,
    derive_event_id,
)
from cmrqc_shared.events.examples import example_volume_ready as sample_volume_event

PRODUCER = ProducerInfo(service="test", version="0")


def test_the_same_inputs_always_derive_the_same_event_id() -> None:
    assert derive_event_id("cmrqc.X", "a", "b") == derive_event_id("cmrqc.X", "a", "b")


def test_different_inputs_or_schemas_derive_different_event_ids() -> None:
    ids = {
        derive_event_id("cmrqc.X", "a", "b"),
        derive_event_id("cmrqc.X", "ab"),
        derive_event_id("cmrqc.X", "b", "a"),
        derive_event_id("cmrqc.Y", "a", "b"),
    }
    assert len(ids) == 4


def test_an_event_id_cannot_be_derived_from_nothing() -> None:
    with pytest.raises(ValueError, match="at least one input"):
        derive_event_id("cmrqc.X")


def test_a_recreated_event_carries_the_id_of_the_first_attempt() -> None:
    assert sample_volume_event(3, "run").event_id == sample_volume_event(3, "run").event_id


def test_events_round_trip_through_the_wire_format() -> None:
    event = sample_volume_event(1, "run")
    assert VolumeReady.from_bytes(event.to_bytes()) == event


def test_a_record_of_another_schema_is_rejected() -> None:
    payload = json.loads(sample_volume_event(1, "run").to_bytes())
    payload["schema_name"] = "cmrqc.SegmentationReady"
    with pytest.raises(ValidationError, match="does not match"):
        VolumeReady.model_validate(payload)


def test_a_record_missing_a_required_field_is_rejected() -> None:
    payload = json.loads(sample_volume_event(1, "run").to_bytes())
    del payload["volume"]
    with pytest.raises(ValidationError):
        VolumeReady.model_validate(payload)


def test_unknown_fields_from_a_newer_producer_are_ignored_by_older_consumers() -> None:
    payload = json.loads(sample_volume_event(1, "run").to_bytes())
    payload["a_field_added_later"] = {"x": 1}
    assert VolumeReady.model_validate(payload).event_id == payload["event_id"]


def test_records_are_keyed_by_series_instance_uid() -> None:
    event = sample_volume_event(7, "run")
    assert event.key == event.series_instance_uid == "2.25.8.1"


def test_model_announcements_are_keyed_by_model_name_for_compaction() -> None:
    artifact = sample_volume_event(1, "run").volume
    event = ModelPublished.create(
        derived_from=("qc-predictor", "3"),
        producer=PRODUCER,
        model_name="qc-predictor",
        version="3",
        artifact=artifact,
        architecture="qc-fast-v1",
        promoted_at="2026-01-01T00:00:00Z",
    )
    assert event.key == "qc-predictor"


def test_dead_letters_keep_the_original_key() -> None:
    letter = DeadLetter.create(
        derived_from=("t", "0", "5"),
        producer=PRODUCER,
        failed_service="x",
        reason="handler-failed",
        error_type="RuntimeError",
        error_message="boom",
        attempts=3,
        original_key="1.2.3",
    )
    assert letter.key == "1.2.3"


def test_scores_outside_the_unit_interval_are_rejected() -> None:
    with pytest.raises(ValidationError):
        ClassScores(BG=1.0, LV=1.2, LVM=0.5, RVC=0.5, WH=0.5)


@pytest.mark.parametrize("event_type", EVENT_TYPES, ids=lambda t: t.__name__)
def test_no_event_has_a_field_for_patient_identifiers(event_type: type) -> None:
    text = json.dumps(event_type.model_json_schema()).lower()
    for forbidden in ("patient_name", "patientname", "patient_id", "patientid", "birth"):
        assert forbidden not in text


@pytest.mark.parametrize("event_type", EVENT_TYPES, ids=lambda t: t.__name__)
def test_every_event_type_names_a_versioned_topic(event_type: type) -> None:
    assert event_type.TOPIC.startswith("cmrqc.") and event_type.TOPIC.endswith(".v1")
