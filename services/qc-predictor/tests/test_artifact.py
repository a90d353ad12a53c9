"""Artifacts: safetensors round trip, and refusal of corrupt or incompatible files."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save as save_safetensors

from cmrqc_qc_predictor.artifact import ArtifactError, load_artifact, read_metadata
from cmrqc_qc_predictor.models import FAST_ARCHITECTURE

from .conftest import small_fast_artifact


def test_an_artifact_round_trips_weights_calibration_and_metadata() -> None:
    data = small_fast_artifact(version="v7", half_width=0.03)
    model = load_artifact(data, sha256="ab" * 32)
    assert model.architecture == FAST_ARCHITECTURE and model.version == "v7"
    assert model.calibration.half_widths(0.9).tolist() == pytest.approx([0.03] * 5)
    assert not model.network.training
    again = load_artifact(data)
    for (name, a), (_, b) in zip(
        model.network.state_dict().items(), again.network.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


def test_truncated_bytes_are_refused_as_corrupt() -> None:
    data = small_fast_artifact()
    with pytest.raises(ArtifactError) as caught:
        load_artifact(data[: len(data) // 2])
    assert caught.value.reason == "corrupt"
    with pytest.raises(ArtifactError) as caught:
        load_artifact(b"not a model at all")
    assert caught.value.reason == "corrupt"


def _with_metadata(**changes: str) -> bytes:
    data = small_fast_artifact()
    metadata = {**read_metadata(data), **changes}
    tensors = __import__("safetensors.torch", fromlist=["load"]).load(data)
    return bytes(save_safetensors(tensors, metadata=metadata))


@pytest.mark.parametrize(
    "changes",
    [
        {"input_contract": "qc-input-v0:something-else"},
        {"architecture": "qc-unknown-v9"},
        {"format": "someone-elses-format"},
        {"options": json.dumps({"stem": 4, "widths": [8, 8, 16], "hidden": 8})},
    ],
    ids=["input-contract", "architecture", "format", "weights-do-not-fit"],
)
def test_an_incompatible_artifact_is_refused(changes: dict[str, str]) -> None:
    with pytest.raises(ArtifactError) as caught:
        load_artifact(_with_metadata(**changes))
    assert caught.value.reason == "incompatible"
