"""Model artifacts: one safetensors file with the weights, the calibration and the metadata.

Layout of an artifact (``.safetensors``; tensors can never run code when loaded):

* tensors ``model.<name>``: the network's state dict (weights and buffers, e.g. the fast
  model's feature standardisation);
* tensor ``conformal.residuals``: sorted absolute calibration residuals ``(n, 5)``
  (``conformal.py``) of the single-view prediction;
* optional tensors ``conformal.residuals.views-N`` (N in 2..8, fast model only): the same for
  the prediction averaged over N in-plane views (``predictor.run_network``), so that a service
  set to serve N views has intervals fitted for N views (``cmrqc calibrate qc``);
* string metadata: ``format`` (``ARTIFACT_FORMAT``), ``architecture``, ``options`` (JSON of the
  architecture's constructor options), ``input_contract`` (``prepare.INPUT_CONTRACT``),
  ``classes``, ``name``, ``version``, ``created_at`` and ``card`` (JSON: data, seeds, epochs,
  metrics — the model card).

``load_artifact`` refuses anything that does not fit this service (``ArtifactError`` with
``reason`` ``corrupt`` or ``incompatible``) instead of half-loading it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from cmrqc_qc_predictor.classes import OUTPUT_CLASSES
from cmrqc_qc_predictor.conformal import ConformalCalibration
from cmrqc_qc_predictor.models import FAST_ARCHITECTURE, build_model
from cmrqc_qc_predictor.prepare import INPUT_CONTRACT
from cmrqc_shared.safetensors_header import read_safetensors_metadata

ARTIFACT_FORMAT = "cmrqc-qc-model-v1"
MODEL_PREFIX = "model."
RESIDUALS_KEY = "conformal.residuals"
VIEW_RESIDUALS_PREFIX = "conformal.residuals.views-"
MAX_VIEWS = 8
"""In-plane views of the fast model's crop: rotations by k·90°, each as is and mirrored."""


class ArtifactError(ValueError):
    """An artifact that cannot serve here. ``reason``: ``corrupt`` or ``incompatible``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class QcModel:
    """A loaded, ready model: network (eval mode), calibration and metadata."""

    network: nn.Module
    architecture: str
    calibration: ConformalCalibration
    name: str
    version: str
    options: dict[str, Any] = field(default_factory=dict)
    card: dict[str, Any] = field(default_factory=dict)
    sha256: str | None = None
    view_calibrations: dict[int, ConformalCalibration] = field(default_factory=dict)
    """Calibrations of the prediction averaged over N > 1 in-plane views, by N."""

    def calibration_for(self, views: int) -> ConformalCalibration:
        """The calibration of predictions averaged over ``views`` views (1: ``calibration``).

        Raises:
            ValueError: the artifact has no calibration for that many views.
        """
        if views == 1:
            return self.calibration
        if not has_views(self.architecture):
            raise ValueError(
                f"{self.name} {self.version} ({self.architecture}) has no in-plane views to "
                f"average: serve it with 1 view, not {views}"
            )
        if views not in self.view_calibrations:
            fitted = sorted(self.view_calibrations)
            raise ValueError(
                f"{self.name} {self.version} has no interval calibration for {views} views "
                f"(it has one for 1{''.join(f', {n}' for n in fitted)}); "
                "add one with `cmrqc calibrate qc`"
            )
        return self.view_calibrations[views]


def artifact_bytes(
    network: nn.Module,
    *,
    architecture: str,
    calibration: ConformalCalibration,
    name: str,
    version: str,
    options: dict[str, Any] | None = None,
    card: dict[str, Any] | None = None,
    created_at: str = "",
    view_calibrations: dict[int, ConformalCalibration] | None = None,
) -> bytes:
    """Serialise a model to the artifact format (bytes of a safetensors file)."""
    tensors = {
        f"{MODEL_PREFIX}{key}": value.detach().cpu().contiguous()
        for key, value in network.state_dict().items()
    }
    tensors[RESIDUALS_KEY] = torch.from_numpy(np.ascontiguousarray(calibration.residuals))
    for views, view_calibration in sorted((view_calibrations or {}).items()):
        check_view_count(views)
        tensors[f"{VIEW_RESIDUALS_PREFIX}{views}"] = torch.from_numpy(
            np.ascontiguousarray(view_calibration.residuals)
        )
    metadata = {
        "format": ARTIFACT_FORMAT,
        "architecture": architecture,
        "options": json.dumps(options or {}, sort_keys=True),
        "input_contract": INPUT_CONTRACT,
        "classes": ",".join(OUTPUT_CLASSES),
        "name": name,
        "version": version,
        "created_at": created_at,
        "card": json.dumps(card or {}, sort_keys=True),
    }
    return bytes(save_safetensors(tensors, metadata=metadata))


def check_view_count(views: int) -> None:
    """Refuse a count of averaged views a calibration cannot be for.

    Raises:
        ValueError: ``views`` outside 2..``MAX_VIEWS``.
    """
    if not 2 <= views <= MAX_VIEWS:
        raise ValueError(f"a view calibration is for 2 to {MAX_VIEWS} views, not {views}")


def with_view_calibrations(
    data: bytes, calibrations: dict[int, ConformalCalibration], card_update: dict[str, Any]
) -> bytes:
    """The artifact ``data`` with view calibrations added (same count: replaced) and its card's
    top-level keys updated by ``card_update``; weights and the single-view calibration are
    kept bit for bit.

    Raises:
        ArtifactError: ``data`` is not an artifact of this service (``corrupt`` or
            ``incompatible``, as ``load_artifact``).
        ValueError: a view count outside 2..8, or an architecture without in-plane views.
    """
    metadata = read_metadata(data)
    check_compatible(metadata)
    architecture = metadata.get("architecture", "")
    if not has_views(architecture):
        raise ValueError(f"{architecture} has no in-plane crop: views do not apply")
    for views in calibrations:
        check_view_count(views)
    try:
        card = {**json.loads(metadata.get("card", "{}")), **card_update}
        tensors = load_safetensors(data)
    except Exception as error:  # JSON or safetensors errors: the file is damaged
        raise ArtifactError("corrupt", f"cannot rewrite the artifact: {error}") from error
    for views, calibration in calibrations.items():
        tensors[f"{VIEW_RESIDUALS_PREFIX}{views}"] = torch.from_numpy(
            np.ascontiguousarray(calibration.residuals)
        )
    metadata["card"] = json.dumps(card, sort_keys=True)
    return bytes(save_safetensors(tensors, metadata=metadata))


def has_views(architecture: str) -> bool:
    """Whether the architecture's input has an in-plane crop to turn (the fast model)."""
    return architecture == FAST_ARCHITECTURE


def read_metadata(data: bytes) -> dict[str, str]:
    """The string metadata of a safetensors file, without loading its tensors.

    Raises:
        ArtifactError: ``corrupt`` when the file is not a well-formed safetensors file.
    """
    try:
        return read_safetensors_metadata(data)
    except ValueError as error:
        raise ArtifactError("corrupt", str(error)) from error


def check_compatible(metadata: dict[str, str]) -> None:
    """Refuse artifacts of another format, input contract or class list.

    Raises:
        ArtifactError: ``incompatible``, naming the field.
    """
    expected = {
        "format": ARTIFACT_FORMAT,
        "input_contract": INPUT_CONTRACT,
        "classes": ",".join(OUTPUT_CLASSES),
    }
    for key, wanted in expected.items():
        if metadata.get(key) != wanted:
            raise ArtifactError(
                "incompatible",
                f"artifact {key} is {metadata.get(key)!r}, this service needs {wanted!r}",
            )


def load_artifact(data: bytes, *, sha256: str | None = None) -> QcModel:
    """Load an artifact's bytes into a ready model (eval mode, CPU).

    Raises:
        ArtifactError: ``corrupt`` (unparseable file, bad calibration) or ``incompatible``
            (format, input contract, classes, unknown architecture, weights that do not fit
            the architecture exactly).
    """
    metadata = read_metadata(data)
    check_compatible(metadata)
    architecture = metadata.get("architecture", "")
    try:
        options = json.loads(metadata.get("options", "{}"))
        card = json.loads(metadata.get("card", "{}"))
    except json.JSONDecodeError as error:
        raise ArtifactError("corrupt", f"artifact metadata is not JSON: {error}") from error
    try:
        network = build_model(architecture, options)
    except (ValueError, TypeError) as error:
        raise ArtifactError("incompatible", str(error)) from error
    try:
        tensors = load_safetensors(data)
    except Exception as error:  # safetensors raises its own SafetensorError on bad data
        raise ArtifactError("corrupt", f"cannot read the tensors: {error}") from error
    state = {
        key[len(MODEL_PREFIX) :]: value
        for key, value in tensors.items()
        if key.startswith(MODEL_PREFIX)
    }
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ArtifactError(
            "incompatible", f"weights do not fit {architecture}: {error}"
        ) from error
    if RESIDUALS_KEY not in tensors:
        raise ArtifactError("incompatible", "artifact has no conformal calibration")
    try:
        calibration = ConformalCalibration(tensors[RESIDUALS_KEY].numpy().astype(np.float32))
    except ValueError as error:
        raise ArtifactError("corrupt", f"bad calibration: {error}") from error
    if calibration.residuals.shape[1] != len(OUTPUT_CLASSES):
        raise ArtifactError("incompatible", "calibration does not have one column per class")
    view_calibrations = _view_calibrations(tensors, architecture)
    network.eval()
    return QcModel(
        network=network,
        architecture=architecture,
        calibration=calibration,
        name=metadata.get("name", ""),
        version=metadata.get("version", ""),
        options=options,
        card=card,
        sha256=sha256,
        view_calibrations=view_calibrations,
    )


def _view_calibrations(
    tensors: dict[str, torch.Tensor], architecture: str
) -> dict[int, ConformalCalibration]:
    """The ``conformal.residuals.views-N`` tensors, checked.

    Raises:
        ArtifactError: ``incompatible`` for a view count outside 2..8, views on a model
            without a crop, or a calibration without one column per class; ``corrupt`` for
            residuals that are not a valid calibration.
    """
    found: dict[int, ConformalCalibration] = {}
    for key, value in tensors.items():
        if not key.startswith(VIEW_RESIDUALS_PREFIX):
            continue
        suffix = key[len(VIEW_RESIDUALS_PREFIX) :]
        if not suffix.isdigit() or not 2 <= int(suffix) <= MAX_VIEWS:
            raise ArtifactError("incompatible", f"unknown view calibration {key!r}")
        if not has_views(architecture):
            raise ArtifactError(
                "incompatible", f"{architecture} has no in-plane views but carries {key!r}"
            )
        try:
            calibration = ConformalCalibration(value.numpy().astype(np.float32))
        except ValueError as error:
            raise ArtifactError("corrupt", f"bad calibration {key!r}: {error}") from error
        if calibration.residuals.shape[1] != len(OUTPUT_CLASSES):
            raise ArtifactError("incompatible", f"{key!r} does not have one column per class")
        found[int(suffix)] = calibration
    return dict(sorted(found.items()))


def load_artifact_file(path: Path) -> QcModel:
    """``load_artifact`` of a file (its sha256 recorded).

    Raises:
        ArtifactError: as ``load_artifact``.
        OSError: the file cannot be read.
    """
    import hashlib

    data = path.read_bytes()
    return load_artifact(data, sha256=hashlib.sha256(data).hexdigest())


BUILTIN_FAST = Path(__file__).parent / "weights" / "qc-fast.safetensors"
"""The committed fast model."""
