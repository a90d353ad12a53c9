"""Bring your own model: TorchScript archives that follow the network contract.

A TorchScript archive (``torch.jit.save``) whose ``forward`` maps ``(N, C, size, size)``
float32 to ``(N, 4, size, size)`` logits (see :mod:`cmrqc_segmenter.contract`) can replace
the built-in U-Net. Two optional JSON files inside the archive (``_extra_files``) describe it:

* ``cmrqc_contract.json``: the :class:`InputContract` fields (``spacing_mm``, ``size``,
  ``context_slices``, ``clip_percentiles``); missing fields take the defaults.
* ``cmrqc_model.json``: ``{"name": ..., "version": ...}`` for provenance.

Loading a TorchScript archive runs no arbitrary Python (no pickled objects): only the
TorchScript program and its tensors. Only load archives you trust, as with any model.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from cmrqc_segmenter.checkpoints import CheckpointError, file_sha256
from cmrqc_segmenter.contract import NUM_CLASSES, InputContract
from cmrqc_segmenter.inference import ModelIdentity, Precision, Segmenter

# torch >= 2.9 marks TorchScript deprecated (FutureWarning) but keeps it working; it is still
# the one self-contained format that needs no Python class to load, which a user model needs.
_TORCHSCRIPT_DEPRECATION = r".*(jit|TorchScript).*deprecated.*"

CONTRACT_FILE = "cmrqc_contract.json"
MODEL_FILE = "cmrqc_model.json"


def export_torchscript(segmenter: Segmenter, path: Path) -> Path:
    """Trace the segmenter's network on CPU and save it with its contract and identity.

    Raises:
        ValueError: the segmenter already runs a TorchScript module it cannot re-trace.
    """
    network = segmenter.network
    if isinstance(network, torch.jit.ScriptModule):
        scripted = network
    else:
        network = network.to("cpu").to(memory_format=torch.contiguous_format).eval()
        example = torch.zeros(
            1, segmenter.contract.in_channels, segmenter.contract.size, segmenter.contract.size
        )
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", _TORCHSCRIPT_DEPRECATION, FutureWarning)
            scripted = torch.jit.trace(network, example, check_trace=False)
        segmenter.network = segmenter.network.to(segmenter.device)
        if segmenter.channels_last:
            segmenter.network = segmenter.network.to(memory_format=torch.channels_last)
    identity = {"name": segmenter.identity.name, "version": segmenter.identity.version}
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", _TORCHSCRIPT_DEPRECATION, FutureWarning)
        torch.jit.save(
            scripted,
            str(path),
            _extra_files={
                CONTRACT_FILE: segmenter.contract.to_json(),
                MODEL_FILE: json.dumps(identity),
            },
        )
    return path


def load_torchscript(
    path: Path | str,
    *,
    device: str = "auto",
    precision: Precision = "auto",
    max_slices_per_forward: int = 64,
) -> Segmenter:
    """A :class:`Segmenter` running a TorchScript archive that follows the contract.

    Checks the contract with one forward pass on zeros.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: not a TorchScript archive, unreadable metadata, or a network whose
            output does not follow the contract.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(path)
    extra = {CONTRACT_FILE: "", MODEL_FILE: ""}
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", _TORCHSCRIPT_DEPRECATION, FutureWarning)
            network = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except (RuntimeError, ValueError) as error:
        raise CheckpointError(f"{path}: not a TorchScript archive ({error})") from error
    try:
        contract = InputContract.from_json(extra[CONTRACT_FILE] or "{}")
        info = json.loads(extra[MODEL_FILE] or "{}")
    except (ValueError, TypeError) as error:
        raise CheckpointError(f"{path}: unreadable contract metadata ({error})") from error
    sha256 = file_sha256(path)
    identity = ModelIdentity(
        name=str(info.get("name") or path.stem),
        version=str(info.get("version") or sha256[:12]),
        artifact_sha256=sha256,
        source=str(path),
    )
    segmenter = Segmenter(
        network,
        contract,
        identity,
        device=device,
        precision=precision,
        max_slices_per_forward=max_slices_per_forward,
    )
    probe = torch.zeros(1, contract.in_channels, contract.size, contract.size)
    try:
        segmenter.predict_network_grid(probe)
    except (RuntimeError, ValueError) as error:
        raise CheckpointError(
            f"{path}: the network does not follow the contract "
            f"({contract.in_channels}x{contract.size}x{contract.size} in, "
            f"{NUM_CLASSES} classes out): {error}"
        ) from error
    return segmenter
