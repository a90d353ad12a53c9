"""Prometheus metrics of the ingest service, in their own registry (one per service)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

#: Last instance -> VolumeReady buckets, s: from 10 ms (release-triggered) to a minute.
VOLUME_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 2.5, 3, 5, 10, 30, 60)


class IngestMetrics:
    """Counters, gauges and histograms served on /metrics."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.instances_received = Counter(
            "cmrqc_ingest_instances_received",
            "Instances answered, by source and DICOM status (0x0000: stored or skipped).",
            ["source", "status"],
            registry=r,
        )
        self.instances_rejected = Counter(
            "cmrqc_ingest_instances_rejected",
            "Instances refused, by source, DICOM status and reason.",
            ["source", "status", "reason"],
            registry=r,
        )
        self.headers_read = Counter(
            "cmrqc_ingest_headers_read",
            "Instance headers accepted, by reader: fast (plain classic MR) or pydicom.",
            ["reader"],
            registry=r,
        )
        self.instances_duplicate = Counter(
            "cmrqc_ingest_instances_duplicate",
            "Re-sent instances already pending (acknowledged, stored once).",
            registry=r,
        )
        self.series_assembled = Counter(
            "cmrqc_ingest_series_assembled",
            "Series assembled and published as VolumeReady.",
            registry=r,
        )
        self.volumes_published = Counter(
            "cmrqc_ingest_volumes_published",
            "VolumeReady events published, by cardiac phase.",
            ["phase"],
            registry=r,
        )
        self.series_skipped = Counter(
            "cmrqc_ingest_series_skipped",
            "Series that are not short-axis cine MR, by skip rule.",
            ["reason"],
            registry=r,
        )
        self.series_dead_lettered = Counter(
            "cmrqc_ingest_series_dead_lettered",
            "Series that could not be assembled, by reason.",
            ["reason"],
            registry=r,
        )
        self.series_duplicate = Counter(
            "cmrqc_ingest_series_duplicate",
            "Series re-sent with the same instances after they were handled.",
            registry=r,
        )
        self.assembly_retries = Counter(
            "cmrqc_ingest_assembly_retries",
            "Assemblies postponed because the blob store or Kafka failed.",
            registry=r,
        )
        self.volume_latency = Histogram(
            "cmrqc_ingest_volume_latency_seconds",
            "Last instance received -> VolumeReady acknowledged by Kafka, s.",
            buckets=VOLUME_LATENCY_BUCKETS,
            registry=r,
        )
        self.assembly_seconds = Histogram(
            "cmrqc_ingest_assembly_seconds",
            "Time to assemble one series (read, decode, blobs, publish), s.",
            buckets=VOLUME_LATENCY_BUCKETS,
            registry=r,
        )
        self.spool_bytes = Gauge("cmrqc_ingest_spool_bytes", "Bytes held in the spool.", registry=r)
        self.pending_series = Gauge(
            "cmrqc_ingest_pending_series", "Series spooled, not yet complete.", registry=r
        )
        self.open_associations = Gauge(
            "cmrqc_ingest_open_associations", "DICOM associations in progress.", registry=r
        )
