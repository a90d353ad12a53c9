"""The built-in network: a small 2D U-Net over a slice and its neighbours (2.5D)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import torch
from torch import nn

from cmrqc_segmenter.contract import NUM_CLASSES


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of :class:`UNet2D`.

    Raises:
        ValueError: non-positive channel or level counts.
    """

    in_channels: int = 3
    num_classes: int = NUM_CLASSES
    base_channels: int = 16
    levels: int = 4
    """Down-sampling steps; the input size must be a multiple of ``2 ** levels``."""

    def __post_init__(self) -> None:
        if min(self.in_channels, self.num_classes, self.base_channels, self.levels) < 1:
            raise ValueError(f"every UNetConfig field must be >= 1: {self}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> UNetConfig:
        """Parse :meth:`to_json` output.

        Raises:
            ValueError: not a JSON object or invalid values.
        """
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("UNetConfig must be a JSON object")
        return cls(**{k: int(v) for k, v in data.items() if k in cls.__dataclass_fields__})


def _double_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class _Up(nn.Module):
    """Transposed-conv up-sampling, concatenation with the skip, double conv."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2)
        self.conv = _double_conv(2 * out_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([self.up(x), skip], dim=1))


class UNet2D(nn.Module):
    """U-Net (Ronneberger et al. 2015) with batch norm; returns logits ``(N, classes, H, W)``.

    ``H`` and ``W`` must be multiples of ``2 ** config.levels``.
    """

    def __init__(self, config: UNetConfig | None = None) -> None:
        super().__init__()
        self.config = config or UNetConfig()
        widths = [self.config.base_channels * 2**level for level in range(self.config.levels + 1)]
        self.encoders = nn.ModuleList(
            [_double_conv(self.config.in_channels, widths[0])]
            + [_double_conv(widths[i], widths[i + 1]) for i in range(self.config.levels)]
        )
        # Decoders from the deepest level up, so forward() iterates them in order.
        self.decoders = nn.ModuleList(
            [_Up(widths[i + 1], widths[i]) for i in reversed(range(self.config.levels))]
        )
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Conv2d(widths[0], self.config.num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips: list[torch.Tensor] = []
        for index, encoder in enumerate(self.encoders):
            if index > 0:
                skips.append(x)
                x = self.pool(x)
            x = encoder(x)
        for decoder in self.decoders:
            x = decoder(x, skips.pop())
        return self.head(x)


def parameter_count(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
