"""Typed settings of the RCA labeller (prefix ``CMRQC_RCA_LABELLER_``).

Every field is read from the environment, e.g. ``CMRQC_RCA_LABELLER_REFERENCE_COUNT=100``;
the inherited groups (``kafka``, ``blobs``, ``runner``, logging) work as for every service.
``runner.group_id`` (default ``rca-labeller``) is the consumer group of the segmentation
intake; the QC-result intake uses the same name with ``-qc`` appended. ``runner.health_port``
serves /healthz /readyz /metrics for the process.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from cmrqc_rca_labeller.paths import default_cache_dir
from cmrqc_shared.settings import ServiceSettings, service_settings_config


class RcaLabellerSettings(ServiceSettings):
    """Reference set, registration budget, queue and priority of the RCA labeller."""

    model_config = service_settings_config("CMRQC_RCA_LABELLER_")

    reference_set_path: Path | None = Field(
        default=None,
        description="Folder of your own references (see the service README for layouts); "
        "empty: the synthetic set of reference_count references.",
    )
    reference_count: int = Field(
        default=100, ge=1, le=1000, description="K, the size of the synthetic reference set."
    )
    cache_dir: Path = Field(
        default_factory=default_cache_dir,
        description="Where prepared reference sets are cached.",
    )
    max_references: int = Field(
        default=12,
        ge=1,
        description="References taken through the full registration per case (all K are "
        "screened); the budget below may lower it.",
    )
    budget_seconds: float = Field(
        default=30.0,
        gt=0,
        description="Target wall-clock seconds per case: when a case takes longer, the next "
        "ones register fewer references (not below min_references), and more again when "
        "there is room.",
    )
    min_references: int = Field(
        default=4, ge=1, description="Fewest references the budget may cut down to."
    )
    coarse_iterations: int = Field(default=20, ge=0, description="Coarse affine steps.")
    fine_iterations: int = Field(default=15, ge=0, description="Fine affine steps.")
    ffd_iterations: int = Field(default=30, ge=0, description="B-spline deformation steps.")
    device: str | None = Field(
        default=None, description="torch device (cpu, cuda, cuda:1); empty: CUDA if present."
    )
    torch_threads: int | None = Field(
        default=None, ge=1, description="torch CPU threads; empty: torch's default."
    )
    pass_threshold: float = Field(
        default=0.7,
        ge=0,
        le=1,
        description="WH Dice pass threshold, for priority when a QC result names none.",
    )
    priority_unknown_cost: float = Field(
        default=0.15,
        ge=0,
        description="Priority cost of a case whose QC result has not arrived (cost = 0 for "
        "an uncertain verdict, abs(predicted WH Dice − threshold) otherwise; lower goes first).",
    )
    priority_aging_per_hour: float = Field(
        default=0.1,
        ge=0,
        description="Cost a waiting case sheds per hour relative to newer ones (no starvation).",
    )
    queue_url: str | None = Field(
        default=None,
        description="Redis holding the pending-case queue; empty: the blob store's Redis, "
        "else redis://127.0.0.1:6379/0.",
    )
    queue_prefix: str = Field(
        default="cmrqc:rca-labeller",
        description="Key prefix of the queue (the Kafka topic namespace is appended).",
    )
    lease_s: float = Field(
        default=900.0, gt=0, description="A claimed case is retried if not done within this."
    )
    done_ttl_days: float = Field(
        default=30.0, gt=0, description="How long labelled cases are remembered (de-duplication)."
    )
    max_attempts: int = Field(
        default=3, ge=1, description="Worker attempts per case before it is dead-lettered."
    )
    retry_delay_s: float = Field(default=10.0, ge=0, description="Wait before a retry, s.")
    idle_poll_s: float = Field(
        default=0.5, gt=0, description="How often an idle worker looks at the queue, s."
    )

    def resolved_queue_url(self) -> str:
        """The Redis URL of the queue (never log it: it may hold a password)."""
        return self.redis_url(self.queue_url)
