"""What each architecture receives, derived from one prepared case, and batching."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from cmrqc_qc_predictor.features import segmentation_features
from cmrqc_qc_predictor.models import FAST_ARCHITECTURE, PAPER_ARCHITECTURE
from cmrqc_qc_predictor.prepare import PreparedInput, crop_around_segmentation


def case_inputs(architecture: str, prepared: PreparedInput) -> dict[str, torch.Tensor]:
    """The tensors of one case for ``architecture`` (no batch dimension).

    * paper: ``grid`` (5, 8, 224, 224), the prepared input itself;
    * fast: ``crop`` (5, 8, 112, 112), heart-centred, and ``features`` (shape features).

    Raises:
        ValueError: an unknown architecture.
    """
    if architecture == PAPER_ARCHITECTURE:
        return {"grid": prepared.tensor}
    if architecture == FAST_ARCHITECTURE:
        crop, corner = crop_around_segmentation(prepared.tensor)
        features = segmentation_features(
            prepared.tensor, corner, prepared.grid_mm, prepared.slice_mm
        )
        return {"crop": crop.contiguous(), "features": features}
    raise ValueError(f"unknown QC model architecture {architecture!r}")


def collate(cases: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack per-case tensors into a batch (same keys in every case).

    Raises:
        ValueError: no cases.
    """
    if not cases:
        raise ValueError("cannot collate an empty batch")
    return {key: torch.stack([case[key] for case in cases]) for key in cases[0]}
