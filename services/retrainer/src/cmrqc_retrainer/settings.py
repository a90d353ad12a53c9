"""Typed settings of the retrainer (prefix ``CMRQC_RETRAINER_``)."""

from __future__ import annotations

from pydantic import Field

from cmrqc_shared.settings import ServiceSettings, service_settings_config


class RetrainerSettings(ServiceSettings):
    """Label store, when to train, how to train, and when a challenger may be promoted."""

    model_config = service_settings_config("CMRQC_RETRAINER_")

    model_name: str = Field(
        default="qc-predictor", min_length=1, description="Registry name of the QC model."
    )
    initial_model: str = Field(
        default="builtin",
        description="Champion while the registry has none promoted: builtin (the committed fast "
        "model) or a path to a .safetensors artifact.",
    )
    store_url: str | None = Field(
        default=None,
        description="Redis of the label store and the model registry (may hold a password); "
        "unset: the blob store's Redis.",
    )
    store_prefix: str = Field(
        default="cmrqc:retrainer", description="Key prefix of the label store."
    )
    registry_prefix: str = Field(
        default="cmrqc:models:", description="Key prefix of the model registry."
    )
    holdout_fraction: float = Field(
        default=0.2,
        gt=0.0,
        lt=1.0,
        description="Share of series kept for the fixed holdout (by a hash of the series UID: "
        "a series is never in both).",
    )
    min_new_labels: int = Field(
        default=50, ge=1, description="Train a challenger once this many new training labels came."
    )
    min_holdout: int = Field(
        default=10, ge=1, description="Never compare models on fewer holdout cases than this."
    )
    max_training_labels: int = Field(
        default=5000, ge=1, description="Most recent labels a challenger trains on."
    )
    promote_margin: float = Field(
        default=0.002,
        ge=0.0,
        description="Promote only when the challenger's holdout WH MAE is lower by this much.",
    )
    guard_set: str | None = Field(
        default=None,
        description="QC dataset folder (cmrqc make-qc-dataset layout) whose ground-truth "
        "cases guard against forgetting: a challenger worse on them than the champion by more "
        "than guard_margin is never promoted; unset: no guard.",
    )
    guard_split: str = Field(
        default="val", description="Split of guard_set used (balanced by Dice bins)."
    )
    guard_margin: float = Field(
        default=0.01,
        ge=0.0,
        description="Largest guard-set WH MAE increase over the champion a promotion tolerates.",
    )
    epochs: int = Field(default=4, ge=1, description="Fine-tuning epochs per challenger.")
    learning_rate: float = Field(default=5e-4, gt=0.0, description="Fine-tuning learning rate.")
    batch_size: int = Field(default=16, ge=1, description="Fine-tuning batch size.")
    check_interval_s: float = Field(
        default=10.0, gt=0.0, description="How often the trainer looks for new labels, s."
    )
    prefer_calibrated_rca: bool = Field(
        default=True,
        description="Use RcaLabel.calibrated_dsc when present (else the raw maximum).",
    )
    torch_threads: int | None = Field(
        default=None, ge=1, description="torch CPU threads; unset: torch's default."
    )

    def resolved_store_url(self) -> str:
        """The store's Redis URL (never log it: it may hold a password)."""
        return self.redis_url(self.store_url)
