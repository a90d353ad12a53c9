"""Event contracts: one pydantic model per topic, sharing the envelope in ``envelope``."""

from cmrqc_shared.events.common import (
    LABEL_VALUES,
    CardiacPhase,
    ClassIntervals,
    ClassScores,
    IngestSource,
    ModelInfo,
    PipelineTimestamps,
    SegmentationClass,
    Verdict,
)
from cmrqc_shared.events.deadletter import DeadLetter
from cmrqc_shared.events.envelope import Event, ProducerInfo, derive_event_id, utc_now
from cmrqc_shared.events.groundtruth import GroundTruthSubmitted
from cmrqc_shared.events.models import ModelPublished
from cmrqc_shared.events.qc import QcAlert, QcResult
from cmrqc_shared.events.rca import RcaLabel, ReferenceScore
from cmrqc_shared.events.segmentations import SegmentationReady
from cmrqc_shared.events.volumes import VolumeReady

#: Every event type, in data-flow order. One type per topic.
EVENT_TYPES: tuple[type[Event], ...] = (
    VolumeReady,
    SegmentationReady,
    QcResult,
    QcAlert,
    RcaLabel,
    GroundTruthSubmitted,
    ModelPublished,
    DeadLetter,
)

EVENT_TYPE_BY_TOPIC: dict[str, type[Event]] = {t.TOPIC: t for t in EVENT_TYPES}

__all__ = [
    "EVENT_TYPES",
    "EVENT_TYPE_BY_TOPIC",
    "LABEL_VALUES",
    "CardiacPhase",
    "ClassIntervals",
    "ClassScores",
    "DeadLetter",
    "Event",
    "GroundTruthSubmitted",
    "IngestSource",
    "ModelInfo",
    "ModelPublished",
    "PipelineTimestamps",
    "ProducerInfo",
    "QcAlert",
    "QcResult",
    "RcaLabel",
    "ReferenceScore",
    "SegmentationClass",
    "SegmentationReady",
    "Verdict",
    "VolumeReady",
    "derive_event_id",
    "utc_now",
]
