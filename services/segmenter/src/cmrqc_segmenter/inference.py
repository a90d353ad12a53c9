"""Segment volumes: preprocess -> network -> probabilities on the native grid -> labelmap.

:class:`Segmenter` wraps any network that follows the :mod:`cmrqc_segmenter.contract` (our
U-Net from a checkpoint, or a user's TorchScript model) and does everything else: validation,
intensity normalisation, resampling to the network grid (with a second, heart-centred pass
when the heart touches the edge of the first field), micro-batched inference, resampling of
the probabilities back onto the native grid, argmax and largest-component clean-up.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from numpy.typing import NDArray
from scipy import ndimage

from cmrqc_segmenter.contract import NUM_CLASSES, InputContract
from cmrqc_segmenter.postprocess import largest_connected_component
from cmrqc_segmenter.preprocess import (
    FieldGeometry,
    class_argmax,
    normalise_intensity,
    to_native_grid,
    to_native_labels,
    to_network_grid,
    validate_volume,
)

logger = logging.getLogger(__name__)

Precision = Literal["auto", "fp32", "bf16"]
VolumeInput = tuple[NDArray[np.generic], tuple[float, float]]
"""A volume ``(k, j, i)`` and its pixel spacing ``(row, column)`` in mm."""

_EDGE_MARGIN_PX = 3
"""Foreground this close to the edge of the field (network pixels) triggers a second pass."""
_MIN_RECENTRE_SHIFT_PX = 4.0


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX), per /proc/cpuinfo."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: Precision, device: torch.device) -> Literal["fp32", "bf16"]:
    """``"auto"``: bf16 autocast on CPUs with native bf16 (about 2x faster there), else fp32."""
    if precision == "auto":
        return "bf16" if device.type == "cpu" and cpu_has_fast_bf16() else "fp32"
    return precision


def resolve_device(device: str) -> torch.device:
    """``"auto"``: CUDA when present, else the CPU; otherwise the named torch device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@dataclass(frozen=True)
class ModelIdentity:
    """Which weights a segmenter runs (reported on every SegmentationReady)."""

    name: str
    version: str
    artifact_sha256: str | None = None
    """sha256 of the weights file (safetensors or TorchScript archive), hex."""
    source: str = ""
    """Where the weights were loaded from (a path or ``builtin``)."""


@dataclass(frozen=True)
class Segmentation:
    """The result for one volume.

    Attributes:
        labels: uint8 ``(k, j, i)``, the input's shape: 0 BG, 1 LV, 2 LVM, 3 RVC.
        geometry: the network field that produced it (after any re-centring).
        recentred: a second pass centred on the heart was run.
        timings_ms: ``preprocess``, ``inference``, ``postprocess`` wall time, ms (for a
            batch, each volume's share of the batched forward pass).
        probabilities: float32 ``(k, 4, j, i)`` on the native grid, when asked for.
    """

    labels: NDArray[np.uint8]
    geometry: FieldGeometry
    recentred: bool
    timings_ms: dict[str, float] = field(default_factory=dict)
    probabilities: NDArray[np.float32] | None = None


@dataclass
class _Work:
    volume: NDArray[np.float32]
    normalised: NDArray[np.float32]
    geometry: FieldGeometry
    network_probs: torch.Tensor | None = None
    recentred: bool = False
    timings: dict[str, float] = field(
        default_factory=lambda: {"preprocess": 0.0, "inference": 0.0, "postprocess": 0.0}
    )


class Segmenter:
    """Segments short-axis volumes with one network.

    Args:
        network: a module mapping ``(N, C, size, size)`` float32 to ``(N, 4, size, size)``
            logits (see :mod:`cmrqc_segmenter.contract`); put in eval mode here.
        contract: the network's input contract.
        identity: name, version and weights hash, for provenance.
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``, ``"cuda:1"`` …
        precision: ``"fp32"``, ``"bf16"`` autocast (about 2x faster on CPUs with native
            bf16; labels may differ from fp32 at a few boundary voxels), or ``"auto"``: bf16
            on such CPUs, fp32 elsewhere.
        max_slices_per_forward: micro-batch size of one forward pass, in slices.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        contract: InputContract,
        identity: ModelIdentity,
        *,
        device: str = "auto",
        precision: Precision = "auto",
        max_slices_per_forward: int = 64,
    ) -> None:
        if max_slices_per_forward < 1:
            raise ValueError("max_slices_per_forward must be >= 1")
        if precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision must be auto, fp32 or bf16, got {precision!r}")
        self.contract = contract
        self.identity = identity
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.max_slices_per_forward = max_slices_per_forward
        self.channels_last = self.device.type == "cpu" and not isinstance(
            network, torch.jit.ScriptModule
        )
        network = network.to(self.device).eval()
        if self.channels_last:
            network = network.to(memory_format=torch.channels_last)
        self.network = network

    # -- public API ------------------------------------------------------------------------

    def segment(
        self,
        volume: NDArray[np.generic],
        pixel_spacing_mm: tuple[float, float],
        *,
        largest_component: bool = True,
        recentre: bool = True,
        return_probabilities: bool = False,
    ) -> Segmentation:
        """Segment one volume ``(k, j, i)`` with pixel spacing ``(row, column)`` mm.

        Args:
            volume: any real dtype; a 2D array is one slice (the labels are then 3D, 1 slice).
            pixel_spacing_mm: DICOM PixelSpacing order (row spacing, column spacing), mm.
            largest_component: keep only the largest 3D component of each class.
            recentre: when foreground touches the edge of the centred field, run a second
                pass on a field centred on the heart.
            return_probabilities: also return the per-class probabilities (native grid).

        Raises:
            VolumeRejected: the volume can never be segmented (see ``validate_volume``).
        """
        return self.segment_many(
            [(volume, pixel_spacing_mm)],
            largest_component=largest_component,
            recentre=recentre,
            return_probabilities=return_probabilities,
        )[0]

    def segment_many(
        self,
        items: Sequence[VolumeInput],
        *,
        largest_component: bool = True,
        recentre: bool = True,
        return_probabilities: bool = False,
    ) -> list[Segmentation]:
        """Segment several volumes with batched forward passes (one result per input).

        Raises:
            VolumeRejected: one of the volumes can never be segmented (validate each first
                with :func:`validate_volume` to isolate it).
        """
        works = [self._prepare(volume, spacing) for volume, spacing in items]
        self._infer(works)
        if recentre:
            again = [w for w in works if self._recentre(w)]
            if again:
                self._infer(again)
        return [self._finish(w, largest_component, return_probabilities) for w in works]

    # -- the steps -------------------------------------------------------------------------

    def _prepare(self, volume: NDArray[np.generic], spacing: tuple[float, float]) -> _Work:
        started = time.perf_counter()
        checked = validate_volume(volume, spacing)
        normalised = normalise_intensity(checked, self.contract.clip_percentiles)
        geometry = FieldGeometry.centred(
            (checked.shape[1], checked.shape[2]), spacing, self.contract
        )
        work = _Work(checked, normalised, geometry)
        work.timings["preprocess"] += (time.perf_counter() - started) * 1000
        return work

    def _infer(self, works: list[_Work]) -> None:
        started = time.perf_counter()
        inputs = [to_network_grid(w.normalised, w.geometry, self.contract) for w in works]
        prep_ms = (time.perf_counter() - started) * 1000
        started = time.perf_counter()
        probabilities = self.predict_network_grid(torch.cat(inputs))
        infer_ms = (time.perf_counter() - started) * 1000
        total_slices = sum(x.shape[0] for x in inputs)
        offset = 0
        for work, x in zip(works, inputs, strict=True):
            share = x.shape[0] / total_slices
            work.network_probs = probabilities[offset : offset + x.shape[0]]
            offset += x.shape[0]
            work.timings["preprocess"] += prep_ms * share
            work.timings["inference"] += infer_ms * share

    def predict_network_grid(self, inputs: torch.Tensor) -> torch.Tensor:
        """Softmax probabilities ``(N, 4, size, size)`` (CPU, float32) for network inputs.

        Runs in chunks of ``max_slices_per_forward`` slices.

        Raises:
            ValueError: the network returned the wrong shape.
        """
        outputs = []
        autocast = torch.autocast(
            device_type=self.device.type,
            dtype=torch.bfloat16,
            enabled=self.precision == "bf16",
        )
        with torch.inference_mode(), autocast:
            for start in range(0, inputs.shape[0], self.max_slices_per_forward):
                chunk = inputs[start : start + self.max_slices_per_forward].to(self.device)
                if self.channels_last:
                    chunk = chunk.contiguous(memory_format=torch.channels_last)
                logits = self.network(chunk)
                expected = (chunk.shape[0], NUM_CLASSES, *chunk.shape[2:])
                if tuple(logits.shape) != expected:
                    raise ValueError(
                        f"network returned {tuple(logits.shape)}, the contract needs {expected}"
                    )
                outputs.append(torch.softmax(logits.float(), dim=1).cpu().contiguous())
        return torch.cat(outputs)

    def _recentre(self, work: _Work) -> bool:
        """Move the field onto the heart if the first pass found it at the field's edge."""
        assert work.network_probs is not None
        projection = (class_argmax(work.network_probs) > 0).any(dim=0).numpy()
        components, count = ndimage.label(projection)
        if count == 0:
            return False
        # The heart is the largest foreground blob; a stray false positive at the edge of
        # the field must neither trigger nor steer the second pass.
        sizes = np.bincount(components.ravel())
        sizes[0] = 0
        foreground = components == int(sizes.argmax())
        edge = _EDGE_MARGIN_PX
        touches = (
            foreground[:edge].any()
            or foreground[-edge:].any()
            or foreground[:, :edge].any()
            or foreground[:, -edge:].any()
        )
        if not touches:
            return False
        rows, cols = np.nonzero(foreground)
        v = (rows.min() + rows.max()) / 2.0
        u = (cols.min() + cols.max()) / 2.0
        half = (work.geometry.size - 1) / 2.0
        if np.hypot(v - half, u - half) < _MIN_RECENTRE_SHIFT_PX:
            return False
        j, i = work.geometry.network_to_native(float(v), float(u))
        work.geometry = FieldGeometry.centred(
            work.geometry.native_shape,
            work.geometry.pixel_spacing_mm,
            self.contract,
            centre=(float(j), float(i)),
        )
        work.recentred = True
        logger.debug("heart at the field edge: second pass re-centred", extra={"v": v, "u": u})
        return True

    def _finish(
        self, work: _Work, largest_component: bool, return_probabilities: bool
    ) -> Segmentation:
        assert work.network_probs is not None
        started = time.perf_counter()
        native = None
        if return_probabilities:
            native = to_native_grid(work.network_probs, work.geometry)
            labels = class_argmax(native).numpy()
        else:
            labels = to_native_labels(work.network_probs, work.geometry)
        if largest_component:
            labels = largest_connected_component(labels)
        work.timings["postprocess"] += (time.perf_counter() - started) * 1000
        return Segmentation(
            labels=labels,
            geometry=work.geometry,
            recentred=work.recentred,
            timings_ms=dict(work.timings),
            probabilities=native.numpy() if native is not None else None,
        )
