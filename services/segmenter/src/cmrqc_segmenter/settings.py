"""Settings of the segmenter service (environment prefix ``CMRQC_SEGMENTER_``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from cmrqc_shared.settings import ServiceSettings, service_settings_config


class SegmenterSettings(ServiceSettings):
    """What the segmenter reads from the environment (plus the shared Kafka/blobs/runner)."""

    model_config = service_settings_config("CMRQC_SEGMENTER_")

    model: str = Field(
        default="builtin",
        description="builtin (the committed U-Net), a .safetensors checkpoint or a TorchScript "
        "archive following the contract in services/segmenter/README.md.",
    )
    device: str = Field(
        default="auto", description="auto (CUDA when present, else CPU), cpu, cuda, cuda:N."
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        default="auto",
        description="Inference precision; auto: bf16 autocast on CPUs with native bf16 "
        "(AVX512-BF16/AMX, ~2x faster), else fp32.",
    )
    micro_batch_volumes: int = Field(
        default=8, ge=1, description="Most volumes segmented in one batched call."
    )
    max_slices_per_forward: int = Field(
        default=64, ge=1, description="Most slices in one forward pass (bounds memory)."
    )
    torch_threads: int | None = Field(
        default=None, ge=1, description="torch CPU threads; unset: torch's default (all cores)."
    )
