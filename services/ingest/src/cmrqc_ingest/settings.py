"""Typed settings of the ingest service (prefix ``CMRQC_INGEST_``).

Every field is read from the environment, e.g. ``CMRQC_INGEST_DICOM_PORT=11112``; lists are
JSON (``CMRQC_INGEST_ALLOWED_CALLING_AETS='["PACS1","SCANNER2"]'``). The inherited groups
(``kafka``, ``blobs``, ``runner``, logging) work as for every service; ingest uses
``runner.health_host`` / ``runner.health_port`` for /healthz /readyz /metrics.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from cmrqc_shared.settings import ServiceSettings, service_settings_config

_MIB = 1024 * 1024


def default_spool_dir() -> Path:
    """``$XDG_STATE_HOME/cmrqc/ingest-spool`` (``~/.local/state/...``), a durable local path."""
    import os

    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "cmrqc" / "ingest-spool"


class IngestSettings(ServiceSettings):
    """What the ingest service needs: DICOM node, STOW-RS, spool, assembly rules, limits."""

    model_config = service_settings_config("CMRQC_INGEST_")

    ae_title: str = Field(
        default="CMRQC", min_length=1, max_length=16, description="Our DICOM AE title."
    )
    dicom_host: str = Field(default="0.0.0.0", description="Bind address of the DICOM SCP.")
    dicom_port: int = Field(
        default=11112, ge=0, le=65535, description="DICOM SCP port; 0: any free port."
    )
    allowed_calling_aets: list[str] = Field(
        default_factory=list,
        description="Calling AE titles allowed to associate (JSON list); empty: accept all.",
    )
    accept_all_storage: bool = Field(
        default=True,
        description="Accept every storage SOP class (non-MR instances are acknowledged and "
        "skipped, not spooled); false: negotiate MR and Enhanced MR only.",
    )
    scp_engine: Literal["native", "pynetdicom"] = Field(
        default="native",
        description="DICOM node: native (our Upper Layer implementation; about twice the "
        "throughput) or pynetdicom.",
    )
    max_associations: int = Field(default=16, ge=1, description="Concurrent associations.")
    max_pdu_bytes: int = Field(
        default=131072, ge=0, description="Maximum PDU size we receive, bytes (0: unlimited)."
    )
    network_timeout_s: float = Field(
        default=60.0, gt=0, description="An association silent this long is aborted, s."
    )
    tls_cert_file: Path | None = Field(
        default=None, description="PEM certificate of the SCP; with the key, enables DICOM TLS."
    )
    tls_key_file: Path | None = Field(default=None, description="PEM private key of the SCP.")
    tls_ca_file: Path | None = Field(
        default=None,
        description="PEM CA bundle; when set, peers must present a certificate it signed.",
    )
    stow_host: str = Field(default="0.0.0.0", description="Bind address of DICOMweb STOW-RS.")
    stow_port: int = Field(
        default=8042, ge=0, le=65535, description="STOW-RS HTTP port; 0: any free port."
    )
    stow_max_request_bytes: int = Field(
        default=2048 * _MIB, ge=1, description="Largest STOW-RS request body accepted, bytes."
    )
    spool_dir: Path = Field(
        default_factory=default_spool_dir,
        description="Durable spool of received instances (survives restarts).",
    )
    spool_fsync: bool = Field(
        default=True,
        description="fsync each spooled instance before acknowledging it (crash-safe).",
    )
    spool_max_bytes: int = Field(
        default=20 * 1024 * _MIB,
        ge=1,
        description="Spool high watermark, bytes: above it new instances are refused (0xA700).",
    )
    spool_min_free_bytes: int = Field(
        default=2 * 1024 * _MIB,
        ge=0,
        description="Refuse new instances (0xA700) when the spool's disk has less free space.",
    )
    quarantine_retention_s: float = Field(
        default=7 * 24 * 3600.0,
        ge=0,
        description="Dead-lettered series' files are kept this long under spool/dead, s.",
    )
    quiet_time_s: float = Field(
        default=2.0,
        gt=0,
        description="A series with no open sender is complete this long after its last "
        "instance, s.",
    )
    assemble_on_release: bool = Field(
        default=True,
        description="A series is complete when the association that sent it is released "
        "(unless an expected count says instances are missing).",
    )
    publish_all_phases: bool = Field(
        default=False,
        description="Also publish the phases other than ED and ES (cardiac_phase OTHER).",
    )
    min_slices: int = Field(
        default=3, ge=1, description="Fewer slice positions: not a short-axis stack (skipped)."
    )
    max_rows: int = Field(default=1024, ge=1, description="Largest Rows accepted.")
    max_columns: int = Field(default=1024, ge=1, description="Largest Columns accepted.")
    max_frames: int = Field(
        default=4096, ge=1, description="Largest NumberOfFrames of one instance."
    )
    max_instance_bytes: int = Field(
        default=512 * _MIB, ge=1, description="Largest encoded instance accepted, bytes."
    )
    max_series_instances: int = Field(
        default=10000, ge=1, description="Largest instance count of one series."
    )
    assembly_process: bool = Field(
        default=True,
        description="Assemble series in a child process: pixel decoding does not hold up "
        "the C-STORE answers of studies still arriving, and a crashing decoder kills the "
        "child, not the service; false: on the assembler thread.",
    )
    assembly_timeout_s: float = Field(
        default=300.0,
        gt=0,
        description="A series the assembly process has not answered after this long kills "
        "it (a hung decoder); the series is retried once, then dead-lettered, s.",
    )
    assembly_retry_s: float = Field(
        default=5.0,
        gt=0,
        description="Wait before retrying a series whose blob write or publish failed, s.",
    )

    @field_validator("allowed_calling_aets")
    @classmethod
    def _strip_aets(cls, value: list[str]) -> list[str]:
        cleaned = [v.strip() for v in value if v.strip()]
        too_long = [v for v in cleaned if len(v) > 16]
        if too_long:
            raise ValueError(f"AE titles longer than 16 characters: {too_long}")
        return cleaned

    @model_validator(mode="after")
    def _tls_pair(self) -> IngestSettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file must be set together")
        if self.tls_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("tls_ca_file needs tls_cert_file and tls_key_file")
        return self

    def tls_enabled(self) -> bool:
        """Whether DICOM TLS is configured (certificate and key both set)."""
        return self.tls_cert_file is not None and self.tls_key_file is not None
