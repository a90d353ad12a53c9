"""The network contract: what a segmentation network receives and must return.

Our own U-Net and any user-supplied TorchScript model follow the same contract, so the
pre- and post-processing (``preprocess``/``postprocess``) never depend on the network:

* input: float32 tensor ``(N, 2 * context_slices + 1, size, size)``. Each sample is one
  short-axis slice ``k`` of a volume with its neighbours as channels, in slice order
  ``k - context_slices … k + context_slices`` (indices clamped at the ends of the stack, so a
  single-slice volume repeats its only slice). Pixels are square, ``spacing_mm`` apart; image
  rows run along the volume's rows (j) and columns along its columns (i), without flips or
  rotations. The field is centred on a point of the image (the image centre, or the heart
  when the first pass found it off-centre); outside the native image the input is 0.
* intensities: per volume, clipped to the ``clip_percentiles`` of its voxels and scaled to
  [0, 1] (0 = lower percentile, 1 = upper).
* output: float tensor ``(N, 4, size, size)`` of logits (or any scores whose softmax is a
  probability) for labels 0 background, 1 LV cavity, 2 LV myocardium, 3 RV cavity.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

LABEL_NAMES: tuple[str, ...] = ("BG", "LV", "LVM", "RVC")
"""Label value -> class name (0 BG, 1 LV cavity, 2 LV myocardium, 3 RV cavity)."""
NUM_CLASSES = len(LABEL_NAMES)


@dataclass(frozen=True)
class InputContract:
    """Geometry and intensity convention of a network's input (see the module docstring).

    Raises:
        ValueError: a non-positive spacing, a size that is not a positive multiple of 16, a
            negative context, or percentiles outside 0 <= lo < hi <= 100.
    """

    spacing_mm: float = 1.5
    """In-plane pixel spacing of the network grid, mm (square pixels)."""
    size: int = 160
    """Rows and columns of the network grid (the field of view is ``size * spacing_mm``)."""
    context_slices: int = 1
    """Neighbouring slices on each side given as extra channels (0: plain 2D)."""
    clip_percentiles: tuple[float, float] = (0.5, 99.5)
    """Intensity percentiles (of the whole volume) mapped to 0 and 1."""

    def __post_init__(self) -> None:
        if not self.spacing_mm > 0:
            raise ValueError(f"spacing_mm must be positive, got {self.spacing_mm}")
        if self.size <= 0 or self.size % 16:
            raise ValueError(f"size must be a positive multiple of 16, got {self.size}")
        if self.context_slices < 0:
            raise ValueError(f"context_slices must be >= 0, got {self.context_slices}")
        lo, hi = self.clip_percentiles
        if not 0.0 <= lo < hi <= 100.0:
            raise ValueError(f"clip_percentiles must satisfy 0 <= lo < hi <= 100, got {lo, hi}")

    @property
    def in_channels(self) -> int:
        """Channels of the network input: the slice and its neighbours."""
        return 2 * self.context_slices + 1

    @property
    def field_of_view_mm(self) -> float:
        """Side of the square field the network sees, mm."""
        return self.size * self.spacing_mm

    def to_json(self) -> str:
        """Compact JSON (stored in checkpoints and TorchScript archives)."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> InputContract:
        """Parse :meth:`to_json` output (unknown keys are ignored, missing keys default).

        Raises:
            ValueError: not a JSON object, or invalid values.
        """
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("the contract must be a JSON object")
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        if "clip_percentiles" in known:
            lo, hi = known["clip_percentiles"]
            known["clip_percentiles"] = (float(lo), float(hi))
        return cls(**known)
