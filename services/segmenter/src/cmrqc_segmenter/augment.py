"""Training samples: random slices resampled to the network grid, with augmentation.

The geometric part reuses the inference resampling (:class:`FieldGeometry`), adding a
random rotation, zoom and shift of the field, so training sees exactly the input the
service produces. No flips: a flip would put the RV on the wrong side of the LV, which
short-axis images never show. Labels are resampled as one-hot maps with the same bilinear
grid, so targets keep their sub-pixel boundaries (soft labels).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray

from cmrqc_segmenter.contract import NUM_CLASSES, InputContract
from cmrqc_segmenter.data import LabelledVolume
from cmrqc_segmenter.preprocess import FieldGeometry, normalise_intensity, slice_context_indices


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random transformations (all uniform unless stated)."""

    rotation_deg: float = 30.0
    """Field rotation in [-rotation_deg, rotation_deg]."""
    zoom_range: tuple[float, float] = (0.8, 1.25)
    """Field scale, log-uniform (1: the contract's spacing)."""
    heart_jitter_mm: float = 45.0
    """Field centre = heart centre + uniform shift in [-jitter, jitter] along rows and columns."""
    off_heart_probability: float = 0.2
    """Probability that the field is centred near the image centre instead (as in inference)."""
    image_jitter_mm: float = 60.0
    gamma_range: tuple[float, float] = (0.7, 1.5)
    """Intensity gamma, log-uniform."""
    contrast_range: tuple[float, float] = (0.85, 1.15)
    brightness: float = 0.08
    """Additive brightness shift in [-brightness, brightness] (intensity units of [0, 1])."""
    noise_sigma_max: float = 0.04
    """Gaussian noise sigma drawn in [0, noise_sigma_max]."""


class _PreparedVolume:
    __slots__ = ("centre", "image", "labels", "shape", "spacing")

    def __init__(self, volume: LabelledVolume, contract: InputContract) -> None:
        self.image = normalise_intensity(volume.image, contract.clip_percentiles).astype(np.float16)
        self.labels = volume.labels
        self.spacing = volume.pixel_spacing_mm
        self.centre = volume.heart_centre()
        self.shape = (volume.image.shape[1], volume.image.shape[2])


class SliceSampler:
    """Draws augmented training batches from labelled volumes.

    Args:
        volumes: the training volumes (normalised once, kept as float16).
        contract: the network's input contract (spacing, context, normalisation).
        patch_size: training field size in network pixels (a multiple of 16; may be smaller
            than ``contract.size``: the network is fully convolutional).
        augment: augmentation ranges.
    """

    def __init__(
        self,
        volumes: Sequence[LabelledVolume],
        contract: InputContract,
        *,
        patch_size: int = 128,
        augment: AugmentConfig | None = None,
    ) -> None:
        if not volumes:
            raise ValueError("no training volumes")
        if patch_size % 16:
            raise ValueError("patch_size must be a multiple of 16")
        self.contract = contract
        self.patch_size = patch_size
        self.augment = augment or AugmentConfig()
        self.volumes = [_PreparedVolume(v, contract) for v in volumes]
        self._slice_counts = np.array([v.image.shape[0] for v in self.volumes])
        self._slice_offsets = np.concatenate([[0], np.cumsum(self._slice_counts)])

    @property
    def slice_count(self) -> int:
        """Slices available (an epoch's worth of samples)."""
        return int(self._slice_offsets[-1])

    def batch(self, rng: np.random.Generator, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(inputs (B, C, P, P) float32, soft targets (B, 4, P, P) float32)``."""
        flat = rng.integers(0, self.slice_count, size=batch_size)
        volume_index = np.searchsorted(self._slice_offsets, flat, side="right") - 1
        inputs, targets = [], []
        for v_index, f_index in zip(volume_index, flat, strict=True):
            volume = self.volumes[int(v_index)]
            k = int(f_index - self._slice_offsets[v_index])
            image, target = self._sample(rng, volume, k)
            inputs.append(image)
            targets.append(target)
        x = self._intensity(rng, torch.stack(inputs))
        return x, torch.stack(targets)

    def _sample(
        self, rng: np.random.Generator, volume: _PreparedVolume, k: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        aug = self.augment
        rows, cols = volume.shape
        if rng.random() < aug.off_heart_probability:
            base, jitter = ((rows - 1) / 2.0, (cols - 1) / 2.0), aug.image_jitter_mm
        else:
            base, jitter = volume.centre, aug.heart_jitter_mm
        shift = rng.uniform(-jitter, jitter, size=2)
        centre = (
            base[0] + shift[0] / volume.spacing[0],
            base[1] + shift[1] / volume.spacing[1],
        )
        geometry = FieldGeometry(
            native_shape=(rows, cols),
            pixel_spacing_mm=volume.spacing,
            centre=centre,
            spacing_mm=self.contract.spacing_mm,
            size=self.patch_size,
        )
        zoom = math.exp(rng.uniform(math.log(aug.zoom_range[0]), math.log(aug.zoom_range[1])))
        rotation = math.radians(rng.uniform(-aug.rotation_deg, aug.rotation_deg))
        grid = geometry.sampling_grid(rotation_rad=rotation, scale=zoom)
        channels = slice_context_indices(volume.image.shape[0], self.contract.context_slices)[k]
        image = torch.from_numpy(volume.image[channels].astype(np.float32))
        onehot = torch.from_numpy(_one_hot(volume.labels[k]))
        both = torch.cat([image, onehot])[None]
        sampled = F.grid_sample(
            both, grid, mode="bilinear", padding_mode="zeros", align_corners=True
        )[0]
        x, target = sampled[: len(channels)], sampled[len(channels) :]
        target[0] += 1.0 - target.sum(dim=0)
        return x, target

    def _intensity(self, rng: np.random.Generator, x: torch.Tensor) -> torch.Tensor:
        aug = self.augment
        n = x.shape[0]

        def per_sample(values: NDArray[np.float64]) -> torch.Tensor:
            return torch.from_numpy(values.astype(np.float32)).view(n, 1, 1, 1)

        log_gamma = rng.uniform(math.log(aug.gamma_range[0]), math.log(aug.gamma_range[1]), n)
        x = x.clamp(0.0, 1.0) ** per_sample(np.exp(log_gamma))
        x = x * per_sample(rng.uniform(*aug.contrast_range, n))
        x = x + per_sample(rng.uniform(-aug.brightness, aug.brightness, n))
        sigma = per_sample(rng.uniform(0.0, aug.noise_sigma_max, n))
        noise = torch.from_numpy(rng.standard_normal(x.shape, dtype=np.float32))
        return x + sigma * noise


def _one_hot(labels: NDArray[np.uint8]) -> NDArray[np.float32]:
    return (labels[None] == np.arange(NUM_CLASSES)[:, None, None]).astype(np.float32)
