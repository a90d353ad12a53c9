"""Artifacts: safetensors round trip, and refusal of corrupt or incompatible files."""

from __future__ import annotations

import json

import numpy as np
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


def test_view_calibrations_round_trip_and_are_added_without_touching_the_rest() -> None:
    from cmrqc_qc_predictor.artifact import with_view_calibrations
    from cmrqc_qc_predictor.conformal import ConformalCalibration

    data = small_fast_artifact(version="v8", half_width=0.05)
    plain = load_artifact(data)
    assert plain.view_calibrations == {}
    assert plain.calibration_for(1) is plain.calibration
    with pytest.raises(ValueError, match="no interval calibration for 4 views"):
        plain.calibration_for(4)

    four = ConformalCalibration(np.full((30, 5), 0.02, np.float32))
    eight = ConformalCalibration(np.full((30, 5), 0.01, np.float32))
    added = with_view_calibrations(data, {8: eight, 4: four}, {"view_calibrations": {"4": 1}})
    model = load_artifact(added)
    assert sorted(model.view_calibrations) == [4, 8]
    assert model.calibration_for(4).half_widths(0.9).tolist() == pytest.approx([0.02] * 5)
    assert model.calibration_for(8).half_widths(0.9).tolist() == pytest.approx([0.01] * 5)
    assert model.calibration_for(1).half_widths(0.9).tolist() == pytest.approx([0.05] * 5)
    assert model.card["view_calibrations"] == {"4": 1} and model.version == "v8"
    for (name, a), (_, b) in zip(
        plain.network.state_dict().items(), model.network.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="2 to 8 views"):
        with_view_calibrations(data, {9: four}, {})


@pytest.mark.parametrize(
    ("key", "residuals", "reason"),
    [
        ("conformal.residuals.views-9", np.full((5, 5), 0.1), "incompatible"),
        ("conformal.residuals.views-two", np.full((5, 5), 0.1), "incompatible"),
        ("conformal.residuals.views-2", np.full((5, 3), 0.1), "incompatible"),
        ("conformal.residuals.views-2", np.full((5, 5), -0.1), "corrupt"),
    ],
    ids=["too-many-views", "not-a-number", "wrong-columns", "negative-residuals"],
)
def test_a_bad_view_calibration_is_refused(key: str, residuals: np.ndarray, reason: str) -> None:
    from safetensors.torch import load as load_safetensors

    data = small_fast_artifact()
    tensors = load_safetensors(data)
    tensors[key] = torch.from_numpy(residuals.astype(np.float32))
    with pytest.raises(ArtifactError) as caught:
        load_artifact(bytes(save_safetensors(tensors, metadata=read_metadata(data))))
    assert caught.value.reason == reason


def test_a_model_without_in_plane_views_is_told_to_serve_one_view(small_model) -> None:  # type: ignore[no-untyped-def]
    from dataclasses import replace

    from cmrqc_qc_predictor.models import PAPER_ARCHITECTURE

    paper_like = replace(small_model, architecture=PAPER_ARCHITECTURE)
    assert paper_like.calibration_for(1) is paper_like.calibration
    with pytest.raises(ValueError, match="no in-plane views to average"):
        paper_like.calibration_for(2)
