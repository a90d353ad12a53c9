"""Typed settings of the QC predictor (prefix ``CMRQC_QC_PREDICTOR_``).

Every field is read from the environment, e.g. ``CMRQC_QC_PREDICTOR_MAX_BATCH=16``;
thresholds are JSON (``CMRQC_QC_PREDICTOR_THRESHOLDS='{"WH": 0.7, "LVM": 0.6}'``). The
inherited groups (``kafka``, ``blobs``, ``runner``, logging) work as for every service.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from cmrqc_qc_predictor.classes import OUTPUT_CLASSES
from cmrqc_qc_predictor.verdicts import DEFAULT_THRESHOLDS
from cmrqc_shared.settings import ServiceSettings, service_settings_config


class QcPredictorSettings(ServiceSettings):
    """What the QC predictor needs: model source, hot-swap, thresholds, batching, device."""

    model_config = service_settings_config("CMRQC_QC_PREDICTOR_")

    model_source: str = Field(
        default="builtin",
        description="Model served at start: builtin (the committed fast model) or a path to "
        "a .safetensors artifact.",
    )
    model_name: str = Field(
        default="qc-predictor",
        min_length=1,
        description="Model name (key) followed on cmrqc.models.v1 for hot-swap.",
    )
    hot_swap: bool = Field(
        default=True, description="Follow cmrqc.models.v1 and swap in newly published models."
    )
    thresholds: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_THRESHOLDS),
        description="Pass threshold (DSC) per class, JSON; classes BG, LV, LVM, RVC, WH.",
    )
    interval_coverage: float = Field(
        default=0.9, gt=0.0, lt=1.0, description="Nominal coverage of the prediction intervals."
    )
    max_batch: int = Field(default=8, ge=1, description="Most cases per network forward pass.")
    views: int = Field(
        default=1,
        ge=1,
        le=8,
        description="Average each prediction over this many in-plane views of the fast "
        "model's crop (less error for that many forward passes); the model must carry an "
        "interval calibration for it (cmrqc calibrate qc), else it is refused.",
    )
    device: str = Field(
        default="auto", description="auto (CUDA when present, else CPU), cpu, cuda or cuda:N."
    )
    torch_threads: int | None = Field(
        default=None, ge=1, description="torch CPU threads; unset: torch's default."
    )
    alert_on_uncertain: bool = Field(
        default=True, description="Publish a QcAlert for uncertain verdicts too (not only fail)."
    )

    @field_validator("thresholds")
    @classmethod
    def _known_classes(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(value) - set(OUTPUT_CLASSES))
        if unknown:
            raise ValueError(f"thresholds for unknown classes {unknown}; known: {OUTPUT_CLASSES}")
        outside = {k: v for k, v in value.items() if not 0.0 <= v <= 1.0}
        if outside:
            raise ValueError(f"thresholds must be DSC values in [0, 1], got {outside}")
        return value
