"""``cmrqc retrainer-curve --live``: the online learning curve from studies streamed live.

Unlike the replay (``curve``), nothing here is fed to the retrainer by hand. Every service
runs as its own process, as in ``cmrqc demo``, on a fresh topic namespace of the running
infrastructure (``cmrqc infra up``):

* a simulated PACS pushes ``studies`` synthetic studies by C-STORE to **ingest**;
* one **segmenter** process per ``--segmenter-model`` (each in its own consumer group, as
  when a site runs several model versions side by side) segments every volume, so the labels
  span good and poor segmentations;
* the **QC predictor** starts with a model trained on ``initial_cases`` ground-truth cases and
  hot-swaps to every model the retrainer promotes;
* the **RCA labeller** labels every segmentation and publishes ``cmrqc.rca.v1``;
* the **retrainer** consumes the RCA labels and the annotators' ground truth, trains a
  challenger whenever ``min_new_labels`` new labels arrived and promotes it only when it beats
  the champion on its holdout.

This module plays the two outsiders: the PACS, and the annotators, who verify every
segmentation of the retrainer's holdout series (about ``holdout_fraction`` of the series) and
submit the verified labelmap on ``cmrqc.groundtruth.v1`` — the synthetic truth, re-rendered
from the study's seed. It also watches the topics: each QC result beside its true Dice, each
promotion.

At the end every model that served (the initial one and each promoted one) is scored on the
same two yardsticks: the final ground-truth holdout (every holdout case of the run, so the
points are comparable, unlike the retrainer's own holdout, which grows during the run) and
the QC_TEST split of the QC dataset (never streamed). Writes ``curve.json``, ``curve.png``.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any, Literal

import numpy as np
import redis
from kafka import KafkaConsumer, TopicPartition

from cmrqc_qc_predictor.artifact import QcModel, load_artifact
from cmrqc_qc_predictor.data import FastArrays, QcDatasets, balanced_split, fast_arrays
from cmrqc_qc_predictor.models import FastQcNet
from cmrqc_qc_predictor.scoring import mae_per_class
from cmrqc_qc_predictor.training import predict_fast_arrays
from cmrqc_retrainer.curve import initial_artifact
from cmrqc_retrainer.labels import LabelStore, split_of
from cmrqc_retrainer.worker import case_arrays, curve_points
from cmrqc_shared.blobs import open_blob_store
from cmrqc_shared.bus.publisher import EventPublisher
from cmrqc_shared.datasets.splits import DEMO
from cmrqc_shared.events import (
    ClassScores,
    DeadLetter,
    GroundTruthSubmitted,
    ModelPublished,
    ProducerInfo,
    QcResult,
    RcaLabel,
    SegmentationReady,
)
from cmrqc_shared.metrics import dice_per_class
from cmrqc_shared.processes import ServiceProcess, free_port, ingest_process
from cmrqc_shared.settings import KafkaSettings
from cmrqc_shared.simulator import push_studies, study_failed
from cmrqc_shared.topics import ensure_namespaced_topics

logger = logging.getLogger(__name__)

ANNOTATOR = ProducerInfo(service="annotator-simulation", version="0")
LIVE_SEED_START = DEMO.start + 400_000
"""Default first study seed: inside the simulator's range, away from ``cmrqc demo``'s seeds."""


def _segmenter_label(spec: str) -> str:
    return "builtin" if spec == "builtin" else Path(spec).stem


class _Truth:
    """The synthetic ground truth of pushed studies, rendered once per seed."""

    def __init__(self) -> None:
        self._labels: dict[tuple[int, str], np.ndarray] = {}

    def labels(self, seed: int, phase: Literal["ED", "ES"]) -> np.ndarray:
        if (seed, phase) not in self._labels:
            from cmrqc_shared.synth import render_study

            study = render_study(seed)
            for name in ("ED", "ES"):
                self._labels[(seed, name)] = study.phase(name).labels
        return self._labels[(seed, phase)]


def _score(model: QcModel, arrays: FastArrays) -> dict[str, float]:
    network = model.network
    assert isinstance(network, FastQcNet)
    return mae_per_class(
        predict_fast_arrays(network, arrays.crops, arrays.features), arrays.targets
    )


def run_live_curve(
    *,
    dataset_root: Path,
    out: Path,
    kafka: KafkaSettings,
    redis_url: str,
    studies: int = 200,
    rate_per_s: float = 0.2,
    segmenter_models: tuple[str, ...] = ("builtin",),
    rca_workers: int = 1,
    initial_cases: int = 50,
    initial_epochs: int = 20,
    min_new_labels: int = 150,
    min_holdout: int = 10,
    epochs: int = 4,
    holdout_fraction: float = 0.2,
    seed_start: int = LIVE_SEED_START,
    seed: int = 0,
    timeout_s: float = 7200.0,
    service_env: dict[str, str] | None = None,
    keep: bool = False,
) -> dict[str, Any]:
    """Run the pipeline on ``studies`` studies until their labels are trained on; returns (and
    writes) the curve. ``service_env`` adds settings for every service (for example a smaller
    RCA reference set). The run's label store, registry and artifacts are deleted from Redis
    afterwards unless ``keep``."""
    started = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    run = f"live-{uuid.uuid4().hex[:8]}"
    namespace = f"{kafka.topic_namespace}{run}."
    kafka = kafka.model_copy(update={"topic_namespace": namespace})
    ensure_namespaced_topics(kafka)
    client = redis.Redis.from_url(redis_url)
    blobs = open_blob_store(redis_url)

    # The initial model: `initial_cases` balanced QC_VAL cases with their true Dice.
    dataset = QcDatasets([dataset_root])
    val = balanced_split(dataset, "val", seed=0)
    chosen = np.random.default_rng(seed).permutation(len(val))[:initial_cases]
    initial_bytes = initial_artifact(
        dataset, [(val[i], val[i].true_dsc) for i in chosen], epochs=initial_epochs, seed=seed
    )
    initial_path = out / "initial.safetensors"
    initial_path.write_bytes(initial_bytes)
    logger.info("initial model trained on %d ground-truth cases", len(chosen))
    test = fast_arrays(dataset, balanced_split(dataset, "test", seed=0), progress=False)

    store_prefix = "cmrqc:retrainer"
    registry_prefix = f"cmrqc:{run}:models:"
    store = LabelStore(client, f"{store_prefix}:{namespace}", holdout_fraction)
    common_env = {
        "CMRQC_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "CMRQC_KAFKA__TOPIC_NAMESPACE": namespace,
        "CMRQC_BLOBS__URL": redis_url,
        "CMRQC_LOG_FORMAT": "json",
        **(service_env or {}),
    }
    dicom_port = free_port()

    def replica(env_prefix: str, label: str) -> dict[str, str]:
        # Consumer groups and instance ids of this run only: static membership and
        # transactional ids derive from them, and a replica that shares either with another
        # pipeline on the same broker (a test, a demo) fences it.
        return {
            f"{env_prefix}RUNNER__GROUP_ID": f"{run}-{label}",
            f"{env_prefix}RUNNER__INSTANCE_ID": f"{run}-{label}",
        }

    services = [
        ingest_process(dicom_port, out / "spool" / run, replica("CMRQC_INGEST_", "ingest")),
        *(
            ServiceProcess(
                "segmenter",
                "CMRQC_SEGMENTER_",
                {
                    "CMRQC_SEGMENTER_MODEL": spec,
                    "CMRQC_SEGMENTER_TORCH_THREADS": "1",
                    **replica("CMRQC_SEGMENTER_", f"segmenter-{_segmenter_label(spec)}"),
                },
                instance=f"segmenter-{_segmenter_label(spec)}",
            )
            for spec in segmenter_models
        ),
        ServiceProcess(
            "qc-predictor",
            "CMRQC_QC_PREDICTOR_",
            {
                "CMRQC_QC_PREDICTOR_MODEL_SOURCE": str(initial_path),
                "CMRQC_QC_PREDICTOR_TORCH_THREADS": "1",
                **replica("CMRQC_QC_PREDICTOR_", "qc-predictor"),
            },
        ),
        *(
            ServiceProcess(
                "rca-labeller",
                "CMRQC_RCA_LABELLER_",
                {
                    "CMRQC_RCA_LABELLER_TORCH_THREADS": "1",
                    **replica("CMRQC_RCA_LABELLER_", "rca-labeller"),
                    "CMRQC_RCA_LABELLER_RUNNER__INSTANCE_ID": f"{run}-rca-labeller-{worker}",
                },
                instance=f"rca-labeller-{worker}",
            )
            for worker in range(rca_workers)
        ),
        ServiceProcess(
            "retrainer",
            "CMRQC_RETRAINER_",
            {
                "CMRQC_RETRAINER_INITIAL_MODEL": str(initial_path),
                "CMRQC_RETRAINER_MIN_NEW_LABELS": str(min_new_labels),
                "CMRQC_RETRAINER_MIN_HOLDOUT": str(min_holdout),
                "CMRQC_RETRAINER_EPOCHS": str(epochs),
                "CMRQC_RETRAINER_HOLDOUT_FRACTION": str(holdout_fraction),
                "CMRQC_RETRAINER_CHECK_INTERVAL_S": "5",
                "CMRQC_RETRAINER_STORE_PREFIX": store_prefix,
                "CMRQC_RETRAINER_REGISTRY_PREFIX": registry_prefix,
                "CMRQC_RETRAINER_TORCH_THREADS": "1",
                **replica("CMRQC_RETRAINER_", "retrainer"),
            },
        ),
    ]
    log_dir = out / "logs"

    watcher = KafkaConsumer(
        group_id=None,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        **kafka.client_config(),
    )
    topics = [
        kafka.topic(t)
        for t in (
            SegmentationReady.TOPIC,
            QcResult.TOPIC,
            RcaLabel.TOPIC,
            ModelPublished.TOPIC,
            DeadLetter.TOPIC,
        )
    ]
    watcher.assign(
        [
            TopicPartition(t, p)
            for t in topics
            for p in sorted(watcher.partitions_for_topic(t) or ())
        ]
    )

    seed_by_series: dict[str, int] = {}
    sent: list[dict[str, Any]] = []

    def pushed(study: dict[str, Any]) -> None:
        sent.append(study)
        if "series_instance_uid" in study:
            seed_by_series[study["series_instance_uid"]] = study["seed"]

    truth = _Truth()
    segmentations: dict[str, SegmentationReady] = {}
    true_dsc: dict[str, ClassScores] = {}
    unscored: list[SegmentationReady] = []
    qc_rows: list[dict[str, Any]] = []
    rca_labelled: set[str] = set()
    dead_letters: dict[str, int] = defaultdict(int)  # by service and reason
    unlabellable: set[str] = set()  # segmentations the RCA labeller dead-lettered
    promotions: list[ModelPublished] = []
    ground_truth_sent = 0
    exit_codes: dict[str, int | None] = {}
    pusher = threading.Thread(
        target=lambda: push_studies(
            studies=studies,
            rate_per_s=rate_per_s,
            host="127.0.0.1",
            port=dicom_port,
            called_aet="CMRQC",
            seed_start=seed_start,
            progress=False,
            on_study=pushed,
        ),
        name="pacs",
        daemon=True,
    )
    try:
        for service in services:
            service.start(common_env, log_dir)
        deadline = time.monotonic() + 300
        while not all(s.ready() for s in services):
            if time.monotonic() > deadline:
                raise RuntimeError("services did not become ready within 300 s")
            time.sleep(0.5)
        logger.info(
            "%d services ready (logs in %s); pushing %d studies", len(services), log_dir, studies
        )
        pusher.start()
        deadline = time.monotonic() + timeout_s
        next_report = time.monotonic()
        with EventPublisher(kafka, client_id="annotator-simulation") as publisher:
            while time.monotonic() < deadline:
                for records in watcher.poll(timeout_ms=500).values():
                    for record in records:
                        topic = record.topic
                        if topic == kafka.topic(SegmentationReady.TOPIC):
                            seg = SegmentationReady.from_bytes(record.value)
                            if seg.event_id not in segmentations:
                                segmentations[seg.event_id] = seg
                                unscored.append(seg)
                        elif topic == kafka.topic(QcResult.TOPIC):
                            result = QcResult.from_bytes(record.value)
                            qc_rows.append(
                                {
                                    "segmentation_event_id": result.segmentation_event_id,
                                    "model": result.model.version,
                                    "predicted_wh": result.predicted_dsc.WH,
                                    "verdict": result.verdict.value,
                                }
                            )
                        elif topic == kafka.topic(RcaLabel.TOPIC):
                            rca_labelled.add(
                                RcaLabel.from_bytes(record.value).segmentation_event_id
                            )
                        elif topic == kafka.topic(ModelPublished.TOPIC):
                            promotions.append(ModelPublished.from_bytes(record.value))
                        else:
                            letter = DeadLetter.from_bytes(record.value)
                            dead_letters[f"{letter.failed_service}: {letter.reason}"] += 1
                            segmentation_topic = kafka.topic(SegmentationReady.TOPIC)
                            if (
                                letter.original_topic == segmentation_topic
                                and letter.original_value_b64
                                and not letter.original_value_truncated
                            ):
                                original = base64.b64decode(letter.original_value_b64)
                                unlabellable.add(SegmentationReady.from_bytes(original).event_id)
                # The annotators: score every segmentation against the truth, and submit the
                # verified labelmap of each one on a holdout series.
                for seg in list(unscored):
                    series = seg.series_instance_uid or ""
                    if series not in seed_by_series:
                        continue  # its study's push has not returned yet
                    unscored.remove(seg)
                    phase: Literal["ED", "ES"] = "ED" if seg.cardiac_phase.value == "ED" else "ES"
                    reference = truth.labels(seed_by_series[series], phase)
                    labels = blobs.get_array(seg.labelmap)
                    if labels.shape != reference.shape:
                        logger.warning("segmentation %s: grid differs from the truth", seg.event_id)
                        continue
                    scores = dice_per_class(labels, reference)
                    true_dsc[seg.event_id] = scores
                    if split_of(series, holdout_fraction) == "holdout":
                        publisher.publish(
                            GroundTruthSubmitted.create(
                                derived_from=(seg.event_id, "synthetic-truth"),
                                producer=ANNOTATOR,
                                study_instance_uid=seg.study_instance_uid,
                                series_instance_uid=seg.series_instance_uid,
                                causation_id=seg.event_id,
                                segmentation_event_id=seg.event_id,
                                volume=seg.volume,
                                labelmap=seg.labelmap,
                                reference_labelmap=blobs.put_array(reference),
                                affine=seg.affine,
                                annotator="synthetic-truth",
                                true_dsc=scores,
                            )
                        )
                        ground_truth_sent += 1
                counts = store.counts()
                expected = 2 * len(seed_by_series) * len(segmenter_models)
                if time.monotonic() >= next_report:
                    next_report = time.monotonic() + 30
                    logger.info(
                        "pushed %d/%d studies; %d segmentations, %d QC results, %d RCA labels, "
                        "%d ground truth; label store %s; %d promotions",
                        len(sent),
                        studies,
                        len(segmentations),
                        len(qc_rows),
                        len(rca_labelled),
                        ground_truth_sent,
                        counts,
                        len(promotions),
                    )
                all_labelled = (
                    not pusher.is_alive()
                    and len(segmentations) >= expected
                    and len(rca_labelled | unlabellable) >= len(segmentations)
                    and counts["train"] + counts["holdout"] >= len(rca_labelled)
                )
                if all_labelled and (
                    counts["new"] < min_new_labels or counts["holdout"] < min_holdout
                ):
                    break  # every label stored and no round pending (or possible)
            else:
                logger.warning("timed out after %.0f s; scoring what was promoted", timeout_s)
    finally:
        for service in reversed(services):
            exit_codes[service.label] = service.stop(timeout_s=120)
        watcher.close()

    # Score every model that served on the final ground-truth holdout and on QC_TEST.
    holdout_cases = [c for c in store.holdout_cases() if c.source == "groundtruth"]
    holdout, _ = case_arrays(blobs, holdout_cases)
    served: list[tuple[QcModel, ModelPublished | None]] = [(load_artifact(initial_bytes), None)]
    for promotion in promotions:
        data = blobs.get(promotion.artifact)  # verifies the hash
        served.append((load_artifact(data, sha256=promotion.artifact.sha256), promotion))
    points = []
    for index, (model, event) in enumerate(served):
        provenance = event.provenance if event else {}
        points.append(
            {
                "round": index,
                "serving": model.version,
                "registry_version": event.version if event else None,
                "labels_seen": int(provenance.get("training_labels", 0))
                + int(provenance.get("validation_labels", 0)),
                "promoted": event is not None,
                "holdout_wh_mae": _score(model, holdout)["WH"] if holdout else None,
                "retrainer_holdout_wh_mae": event.metrics.get("holdout_mae_WH") if event else None,
                "retrainer_holdout_cases": int(provenance.get("holdout_labels", 0)),
                "test_wh_mae": _score(model, test)["WH"],
            }
        )
    live = _live_errors(qc_rows, true_dsc)
    summary = {
        "run": run,
        "studies_sent": len(sent),
        "studies_failed_to_send": sum(study_failed(s) for s in sent),
        "segmenters": [_segmenter_label(s) for s in segmenter_models],
        "segmentations": len(segmentations),
        "rca_labels": len(rca_labelled),
        "dead_letters": dict(dead_letters),
        "ground_truth_submitted": ground_truth_sent,
        "final_holdout_cases": 0 if holdout is None else len(holdout.targets),
        "test_cases": len(test.targets),
        "initial_ground_truth_cases": len(chosen),
        "min_new_labels": min_new_labels,
        "rounds": curve_points(store),
        "points": points,
        "live_qc_error_by_model": live,
        "true_wh_distribution": np.histogram(
            [s.WH for s in true_dsc.values()], bins=10, range=(0, 1)
        )[0].tolist(),
        "service_exit_codes": exit_codes,
        "seconds": round(time.monotonic() - started, 1),
    }
    (out / "curve.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    write_live_curve_png(summary, qc_rows, true_dsc, out / "curve.png")
    if not keep:
        for promotion in promotions:
            blobs.delete(promotion.artifact.sha256)  # retained blobs never expire on their own
        for key in client.scan_iter(match=f"*{run}*"):
            client.delete(key)
    store.close()
    return summary


def _live_errors(
    qc_rows: list[dict[str, Any]], true_dsc: dict[str, ClassScores]
) -> dict[str, dict[str, float]]:
    """Mean |predicted − true| WH Dice of the QC results each served model published."""
    errors: dict[str, list[float]] = defaultdict(list)
    for row in qc_rows:
        scores = true_dsc.get(row["segmentation_event_id"])
        if scores is not None:
            errors[row["model"]].append(abs(row["predicted_wh"] - scores.WH))
    return {
        model: {"results": len(values), "wh_mae": float(np.mean(values))}
        for model, values in errors.items()
    }


def write_live_curve_png(
    summary: dict[str, Any],
    qc_rows: list[dict[str, Any]],
    true_dsc: dict[str, ClassScores],
    path: Path,
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = summary["points"]
    fig, (curve, stream) = plt.subplots(1, 2, figsize=(12, 4.4))
    labels = [p["labels_seen"] for p in points]
    if summary["final_holdout_cases"]:
        curve.plot(
            labels,
            [p["holdout_wh_mae"] for p in points],
            "s-",
            label=f"final ground-truth holdout ({summary['final_holdout_cases']} cases)",
        )
    curve.plot(
        labels,
        [p["test_wh_mae"] for p in points],
        "o--",
        label=f"QC_TEST, never streamed ({summary['test_cases']} cases)",
    )
    curve.set_xlabel("labels trained on (RCA; ground truth on holdout series excluded)")
    curve.set_ylabel("WH Dice MAE of the serving model")
    curve.set_title(f"Promotions: {len(points) - 1}")
    curve.grid(alpha=0.3)
    curve.legend()

    scored = [
        (index, abs(row["predicted_wh"] - true_dsc[row["segmentation_event_id"]].WH))
        for index, row in enumerate(qc_rows)
        if row["segmentation_event_id"] in true_dsc
    ]
    if scored:
        order, errors = zip(*scored, strict=True)
        window = max(1, len(errors) // 20)
        rolling = np.convolve(errors, np.ones(window) / window, mode="valid")
        stream.plot(order, errors, ".", alpha=0.25, label="one QC result")
        stream.plot(order[window - 1 :], rolling, "-", label=f"mean of {window}")
        changes = [
            i for i in range(1, len(qc_rows)) if qc_rows[i]["model"] != qc_rows[i - 1]["model"]
        ]
        for change in changes:
            stream.axvline(change, color="tab:green", alpha=0.4)
    stream.set_xlabel("QC results in arrival order (green: the predictor hot-swapped)")
    stream.set_ylabel("|predicted − true| WH Dice")
    stream.set_title("Live QC error of the published results")
    stream.grid(alpha=0.3)
    stream.legend()
    fig.suptitle(
        f"Live online retraining: {summary['studies_sent']} studies, "
        f"{summary['segmentations']} segmentations by {', '.join(summary['segmenters'])}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
