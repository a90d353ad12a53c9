"""``cmrqc demo``: the whole pipeline on local defaults, watched from the outside.

Starts the local infrastructure and every installed service as its own process (as they run
in containers), pushes synthetic studies by C-STORE like a PACS, and prints each QC result
as it arrives on ``cmrqc.qc.v1`` — predicted Dice with its interval and verdict beside the
true Dice (the demo knows the synthetic ground truth) and the latency from the last image
to the verdict. Services are stopped with SIGTERM at the end (they drain and commit).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from typing import Any, Literal

from kafka import KafkaConsumer, TopicPartition

from cmrqc_cli.infra import KafkaCluster, redis_url, start_cluster, start_redis
from cmrqc_cli.infra.paths import run_dir
from cmrqc_shared.datasets.splits import DEMO
from cmrqc_shared.events import QcResult, RcaLabel, SegmentationReady
from cmrqc_shared.processes import ServiceProcess, free_port, ingest_process
from cmrqc_shared.settings import KafkaSettings
from cmrqc_shared.topics import ensure_namespaced_topics


def next_demo_seed(studies: int) -> int:
    """The first seed of this run: each run pushes studies no earlier run pushed (ingest
    recognises a re-sent series and, rightly, does not process it again)."""
    counter = run_dir() / "demo" / "next-seed"
    counter.parent.mkdir(parents=True, exist_ok=True)
    start = int(counter.read_text()) if counter.exists() else DEMO.start
    if start + studies > DEMO.stop:
        start = DEMO.start
    counter.write_text(str(start + studies))
    return start


def run_demo(
    *,
    studies: int,
    rate_per_s: float,
    with_rca: bool,
    timeout_s: float,
    as_json: bool,
    seed_start: int | None = None,
) -> dict[str, Any]:
    """Run the pipeline end to end; return the summary (also printed as it goes)."""
    from cmrqc_shared.simulator import push_studies, study_failed

    cluster = KafkaCluster(1)
    start_cluster(cluster)
    start_redis()
    kafka = KafkaSettings(bootstrap_servers=cluster.bootstrap_servers)
    ensure_namespaced_topics(kafka)
    dicom_port = free_port()
    log_dir = run_dir() / "demo"
    common_env = {
        "CMRQC_KAFKA__BOOTSTRAP_SERVERS": cluster.bootstrap_servers,
        "CMRQC_BLOBS__URL": redis_url(),
        "CMRQC_LOG_FORMAT": "json",
    }
    services = [
        ingest_process(dicom_port, run_dir() / "demo" / "spool"),
        ServiceProcess("segmenter", "CMRQC_SEGMENTER_"),
        ServiceProcess("qc-predictor", "CMRQC_QC_PREDICTOR_"),
    ]
    if with_rca:
        services.append(ServiceProcess("rca-labeller", "CMRQC_RCA_LABELLER_"))

    watcher = KafkaConsumer(
        group_id=None,
        auto_offset_reset="latest",
        isolation_level="read_committed",
        **kafka.client_config(),
    )
    partitions = [
        TopicPartition(topic, partition)
        for topic in (
            kafka.topic(QcResult.TOPIC),
            kafka.topic(SegmentationReady.TOPIC),
            *((kafka.topic(RcaLabel.TOPIC),) if with_rca else ()),
        )
        for partition in sorted(watcher.partitions_for_topic(topic) or ())
    ]
    watcher.assign(partitions)
    watcher.seek_to_end(*partitions)
    for partition in partitions:  # resolve the end offsets now, before anything is sent
        watcher.position(partition)
    rows: list[dict[str, Any]] = []
    rca_rows: list[dict[str, Any]] = []
    try:
        for service in services:
            service.start(common_env, log_dir)
        _say(as_json, f"starting {', '.join(s.name for s in services)} (logs in {log_dir})")
        deadline = time.monotonic() + 180
        while not all(s.ready() for s in services):
            if time.monotonic() > deadline:
                raise RuntimeError("services did not become ready within 180 s")
            time.sleep(0.5)
        _say(as_json, f"all ready; pushing {studies} studies to 127.0.0.1:{dicom_port}")
        sent = push_studies(
            studies=studies,
            rate_per_s=rate_per_s,
            host="127.0.0.1",
            port=dicom_port,
            called_aet="CMRQC",
            seed_start=seed_start if seed_start is not None else next_demo_seed(studies),
            progress=False,
        )
        seed_by_series = {s["series_instance_uid"]: s["seed"] for s in sent if "error" not in s}
        expected = 2 * len(seed_by_series)  # ED and ES per series
        labelmaps: dict[str, SegmentationReady] = {}
        waiting: list[QcResult] = []  # results whose segmentation the watcher has not read yet
        deadline = time.monotonic() + timeout_s
        while (len(rows) < expected or (with_rca and len(rca_rows) < expected)) and (
            time.monotonic() < deadline
        ):
            for records in watcher.poll(timeout_ms=200).values():
                for record in records:
                    if record.topic == kafka.topic(SegmentationReady.TOPIC):
                        seg = SegmentationReady.from_bytes(record.value)
                        labelmaps[seg.event_id] = seg
                    elif record.topic == kafka.topic(RcaLabel.TOPIC):
                        label = RcaLabel.from_bytes(record.value)
                        if label.series_instance_uid not in seed_by_series:
                            continue  # the queue's backlog from an earlier run: not ours
                        rca_row = _rca_row(label, seed_by_series)
                        rca_rows.append(rca_row)
                        _say(as_json, _format_rca_row(rca_row))
                    else:
                        waiting.append(QcResult.from_bytes(record.value))
            overdue = time.monotonic() > deadline - 5
            for result in list(waiting):
                if result.segmentation_event_id in labelmaps or overdue:
                    waiting.remove(result)
                    row = _row(result, seed_by_series, labelmaps)
                    rows.append(row)
                    _say(as_json, _format_row(row))
        failed_pushes = sum(study_failed(s) for s in sent)
    finally:
        exit_codes = {s.label: s.stop() for s in services}
        watcher.close()
    latencies = [r["last_image_to_verdict_ms"] for r in rows if r["last_image_to_verdict_ms"]]
    errors = [abs(r["predicted_wh"] - r["true_wh"]) for r in rows if r["true_wh"] is not None]
    summary = {
        "studies_sent": len(sent),
        "studies_failed_to_send": failed_pushes,
        "qc_results": len(rows),
        "expected_results": expected,
        "verdicts": {
            v: sum(r["verdict"] == v for r in rows) for v in ("pass", "fail", "uncertain")
        },
        "last_image_to_verdict_ms": {
            "p50": statistics.median(latencies) if latencies else None,
            "max": max(latencies) if latencies else None,
        },
        "wh_abs_error_vs_truth": {"mean": statistics.fmean(errors) if errors else None},
        "service_exit_codes": exit_codes,
        "results": rows,
    }
    if with_rca:
        summary["rca_labels"] = rca_rows
    return summary


def _rca_row(label: RcaLabel, seed_by_series: dict[str, int]) -> dict[str, Any]:
    shown = label.calibrated_dsc or label.estimated_dsc
    return {
        "seed": seed_by_series.get(label.series_instance_uid or ""),
        "phase": label.cardiac_phase.value,
        "rca_wh": shown.WH,
        "calibrated": label.calibrated_dsc is not None,
        "seconds": label.seconds,
        "references_used": label.references_used,
    }


def _format_rca_row(row: dict[str, Any]) -> str:
    kind = "calibrated" if row["calibrated"] else "raw"
    return (
        f"seed {row['seed']} {row['phase']}: RCA WH Dice {row['rca_wh']:.3f} ({kind}; "
        f"{row['references_used']} references registered in {row['seconds']:.1f} s)"
    )


def _row(
    result: QcResult, seed_by_series: dict[str, int], labelmaps: dict[str, SegmentationReady]
) -> dict[str, Any]:
    seed = seed_by_series.get(result.series_instance_uid or "")
    true_wh = _true_wh(seed, result, labelmaps.get(result.segmentation_event_id))
    stamps = result.timestamps
    latency = None
    if stamps.last_instance_received_at and stamps.qc_finished_at:
        latency = (stamps.qc_finished_at - stamps.last_instance_received_at).total_seconds() * 1000
    interval = result.interval
    return {
        "seed": seed,
        "phase": result.cardiac_phase.value,
        "predicted_wh": result.predicted_dsc.WH,
        "interval_wh": [interval.lower.WH, interval.upper.WH] if interval else None,
        "true_wh": true_wh,
        "verdict": result.verdict.value,
        "last_image_to_verdict_ms": latency,
    }


def _true_wh(seed: int | None, result: QcResult, seg: SegmentationReady | None) -> float | None:
    """The true whole-heart Dice: the demo re-renders the synthetic subject's labels."""
    if seed is None or seg is None:
        return None
    from cmrqc_shared.blobs import open_blob_store
    from cmrqc_shared.metrics import dice_per_class
    from cmrqc_shared.synth import render_study

    phase: Literal["ED", "ES"] = "ED" if result.cardiac_phase.value == "ED" else "ES"
    truth = render_study(seed, phases=(phase,)).phase(phase)
    labels = open_blob_store(redis_url()).get_array(seg.labelmap)
    if labels.shape != truth.labels.shape:
        return None
    return dice_per_class(labels, truth.labels).WH


def _format_row(row: dict[str, Any]) -> str:
    interval = row["interval_wh"]
    spread = f" [{interval[0]:.2f}, {interval[1]:.2f}]" if interval else ""
    truth = f"{row['true_wh']:.3f}" if row["true_wh"] is not None else "  ?  "
    latency = row["last_image_to_verdict_ms"]
    elapsed = f"{latency:.0f} ms" if latency is not None else "? ms"
    return (
        f"seed {row['seed']} {row['phase']}: predicted WH Dice {row['predicted_wh']:.3f}{spread}"
        f"  true {truth}  -> {row['verdict']:<9}  {elapsed} from last image"
    )


def _say(as_json: bool, text: str) -> None:
    print(text, file=sys.stderr if as_json else sys.stdout, flush=True)


def print_summary(summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary, indent=2, default=str))
        return
    latency = summary["last_image_to_verdict_ms"]
    print(
        f"\n{summary['qc_results']}/{summary['expected_results']} QC results; verdicts "
        f"{summary['verdicts']}; last image -> verdict p50 {latency['p50']} ms, "
        f"max {latency['max']} ms; mean |predicted - true| WH Dice "
        f"{summary['wh_abs_error_vs_truth']['mean']}"
    )
