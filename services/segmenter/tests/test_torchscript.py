"""Bring your own model: TorchScript archives that follow the contract."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cmrqc_segmenter import CheckpointError, Segmenter, load_model
from cmrqc_segmenter.contract import InputContract
from cmrqc_segmenter.data import LabelledVolume
from cmrqc_segmenter.torchscript import CONTRACT_FILE, MODEL_FILE, export_torchscript

# torch >= 2.9 warns that TorchScript is deprecated; the contract still uses it on purpose.
pytestmark = [pytest.mark.filterwarnings("ignore:.*deprecated.*:FutureWarning")]


class _LeftHalfIsLV(torch.nn.Module):
    """A toy user model: LV on the left half of the field, background elsewhere."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        logits = torch.zeros(n, 4, h, w)
        logits[:, 1, :, : w // 2] = 10.0
        logits[:, 0, :, w // 2 :] = 10.0
        return logits


class _ThreeClasses(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(x.shape[0], 3, x.shape[2], x.shape[3])


def _save(module: torch.nn.Module, path: Path, contract: InputContract | None = None) -> Path:
    """Script and save ``module``; with ``contract``, also the contract and an identity."""
    extra = {}
    if contract is not None:
        extra[CONTRACT_FILE] = contract.to_json()
        extra[MODEL_FILE] = json.dumps({"name": "toy", "version": "9"})
    torch.jit.save(torch.jit.script(module), str(path), _extra_files=extra)
    return path


def test_our_model_exported_to_torchscript_gives_the_same_labels(
    segmenter: Segmenter, test_volumes: list[LabelledVolume], tmp_path: Path
) -> None:
    path = export_torchscript(segmenter, tmp_path / "unet.pt")
    scripted = load_model(path, device="cpu", precision=segmenter.precision)
    assert scripted.contract == segmenter.contract
    assert scripted.identity.name == segmenter.identity.name
    assert scripted.identity.version == segmenter.identity.version
    assert scripted.identity.artifact_sha256 != segmenter.identity.artifact_sha256
    volume = test_volumes[2]
    ours = segmenter.segment(volume.image, volume.pixel_spacing_mm).labels
    theirs = scripted.segment(volume.image, volume.pixel_spacing_mm).labels
    assert (ours != theirs).mean() < 1e-3  # a few boundary voxels at most


def test_a_user_model_runs_on_its_own_declared_contract(tmp_path: Path) -> None:
    contract = InputContract(spacing_mm=2.0, size=64, context_slices=0)
    path = _save(_LeftHalfIsLV(), tmp_path / "toy.pt", contract)
    user = load_model(path, device="cpu")
    assert user.contract == contract and user.identity.name == "toy"
    assert user.identity.version == "9"
    volume = np.random.default_rng(0).normal(100, 10, size=(2, 100, 100))
    labels = user.segment(volume, (1.0, 1.0), largest_component=False, recentre=False).labels
    # The field is 128 mm wide on a 100 mm image: everything left of the centre is LV.
    assert labels.shape == (2, 100, 100)
    assert (labels[:, :, :48] == 1).all() and (labels[:, :, 52:] == 0).all()


def test_a_user_model_without_metadata_gets_the_default_contract(tmp_path: Path) -> None:
    path = _save(_LeftHalfIsLV(), tmp_path / "bare.pt")
    user = load_model(path, device="cpu")
    assert user.contract == InputContract()
    assert user.identity.name == "bare" and len(user.identity.version) == 12


def test_a_model_that_breaks_the_output_contract_is_refused(tmp_path: Path) -> None:
    path = _save(_ThreeClasses(), tmp_path / "three.pt", InputContract(size=32))
    with pytest.raises(CheckpointError, match="contract"):
        load_model(path, device="cpu")
