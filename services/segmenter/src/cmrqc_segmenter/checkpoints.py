"""Weights on disk: safetensors checkpoints of our U-Net, the committed model, the schedule.

A checkpoint is one ``.safetensors`` file: the U-Net's state dict (tensors only) and string
metadata — the architecture, the input contract, the model name and version, the training
step. Loading never unpickles anything. Training writes a checkpoint at fixed fractions of
its steps (``CHECKPOINT_FRACTIONS``), so early checkpoints give poor segmentations and late
ones good segmentations: the spread of quality a QC predictor learns from.
"""

from __future__ import annotations

import hashlib
import json
import re
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from cmrqc_segmenter.contract import InputContract
from cmrqc_segmenter.inference import ModelIdentity, Precision, Segmenter
from cmrqc_segmenter.model import UNet2D, UNetConfig

FORMAT = "cmrqc-segmenter-unet2d/1"
"""Value of the ``format`` metadata key of every checkpoint we write."""
MODEL_NAME = "cmrqc-unet2d"
CHECKPOINT_FRACTIONS: tuple[float, ...] = (0.01, 0.05, 0.2, 0.5, 1.0)
"""Fractions of the training steps after which a checkpoint is kept (early to late)."""
BUILTIN = "builtin"
"""Model spec naming the committed weights."""
_CHECKPOINT_NAME = re.compile(r"step-(\d+)\.safetensors$")


class CheckpointError(ValueError):
    """A file is not a readable checkpoint of this format."""


def checkpoint_steps(
    total_steps: int, fractions: tuple[float, ...] = CHECKPOINT_FRACTIONS
) -> list[int]:
    """The distinct steps (1-based, ascending) at which training keeps a checkpoint."""
    if total_steps < 1:
        raise ValueError("total_steps must be >= 1")
    return sorted({min(total_steps, max(1, round(f * total_steps))) for f in fractions})


def checkpoint_path(directory: Path, step: int) -> Path:
    """Where the checkpoint of ``step`` lives in a training output directory."""
    return directory / "checkpoints" / f"step-{step:06d}.safetensors"


def list_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of every checkpoint under ``directory/checkpoints``, by step."""
    found = []
    for path in (directory / "checkpoints").glob("step-*.safetensors"):
        match = _CHECKPOINT_NAME.search(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def builtin_weights_path() -> Path:
    """The committed weights shipped inside the package."""
    return Path(str(resources.files("cmrqc_segmenter") / "weights" / "unet2d.safetensors"))


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, hex."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_checkpoint(
    path: Path,
    model: UNet2D,
    contract: InputContract,
    *,
    version: str,
    step: int,
    total_steps: int,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` (float32 weights) and its metadata as a safetensors file, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}
    # BatchNorm's num_batches_tracked is an int64 counter: keep its dtype.
    for key, value in model.state_dict().items():
        if not value.is_floating_point():
            tensors[key] = value.detach().cpu().contiguous()
    metadata = {
        "format": FORMAT,
        "name": MODEL_NAME,
        "version": version,
        "step": str(step),
        "total_steps": str(total_steps),
        "unet_config": model.config.to_json(),
        "contract": contract.to_json(),
        "extra": json.dumps(extra or {}, sort_keys=True),
    }
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(path)
    return path


def read_metadata(path: Path) -> dict[str, str]:
    """The string metadata of a checkpoint.

    Raises:
        CheckpointError: not a safetensors file of this format.
        FileNotFoundError: no such file.
    """
    if not Path(path).is_file():
        raise FileNotFoundError(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
    except Exception as error:  # safetensors raises its own error types
        raise CheckpointError(f"{path}: not a safetensors file ({error})") from error
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path}: format {metadata.get('format')!r}, expected {FORMAT!r}")
    return metadata


def load_network(path: Path) -> tuple[UNet2D, InputContract, dict[str, str]]:
    """The U-Net, its contract and its metadata from a checkpoint (weights only, no pickle).

    Raises:
        CheckpointError: not a checkpoint of this format, or weights that do not fit.
        FileNotFoundError: no such file.
    """
    metadata = read_metadata(path)
    try:
        config = UNetConfig.from_json(metadata["unet_config"])
        contract = InputContract.from_json(metadata["contract"])
        model = UNet2D(config)
        model.load_state_dict(load_file(str(path)), strict=True)
    except (KeyError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"{path}: {error}") from error
    return model.eval(), contract, metadata


def load_checkpoint(
    path: Path | str,
    *,
    device: str = "auto",
    precision: Precision = "auto",
    max_slices_per_forward: int = 64,
) -> Segmenter:
    """A ready :class:`Segmenter` from a checkpoint (ours: the committed model or any
    intermediate training checkpoint).

    Raises:
        CheckpointError: not a checkpoint of this format.
        FileNotFoundError: no such file.
    """
    path = Path(path)
    model, contract, metadata = load_network(path)
    identity = ModelIdentity(
        name=metadata.get("name", MODEL_NAME),
        version=metadata.get("version", "unknown"),
        artifact_sha256=file_sha256(path),
        source=str(path),
    )
    return Segmenter(
        model,
        contract,
        identity,
        device=device,
        precision=precision,
        max_slices_per_forward=max_slices_per_forward,
    )


def load_builtin(
    *, device: str = "auto", precision: Precision = "auto", max_slices_per_forward: int = 64
) -> Segmenter:
    """The committed model (``weights/unet2d.safetensors``)."""
    return load_checkpoint(
        builtin_weights_path(),
        device=device,
        precision=precision,
        max_slices_per_forward=max_slices_per_forward,
    )


def load_model(
    spec: str | Path | None,
    *,
    device: str = "auto",
    precision: Precision = "auto",
    max_slices_per_forward: int = 64,
) -> Segmenter:
    """Load a model by spec: ``None``/``"builtin"``, a ``.safetensors`` checkpoint, or a
    TorchScript archive (any other file, see :mod:`cmrqc_segmenter.torchscript`).

    Raises:
        CheckpointError: the file is neither kind.
        FileNotFoundError: no such file.
    """
    options: dict[str, Any] = {
        "device": device,
        "precision": precision,
        "max_slices_per_forward": max_slices_per_forward,
    }
    if spec is None or str(spec) == BUILTIN:
        return load_builtin(**options)
    path = Path(spec)
    if path.suffix == ".safetensors":
        return load_checkpoint(path, **options)
    from cmrqc_segmenter.torchscript import load_torchscript

    return load_torchscript(path, **options)


def state_dict_size_bytes(model: torch.nn.Module) -> int:
    """Bytes of the model's tensors as stored (float32)."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())
