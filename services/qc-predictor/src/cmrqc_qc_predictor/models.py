"""The two quality networks: the paper's 3D ResNet-50 and our fast 2.5D network.

Both map a prepared case to five Dice values in [0, 1] (BG, LV, LVM, RVC, WH; a sigmoid
output, as the paper's X ∈ [0, 1]^5) and share one calling convention,
``model(batch) -> (N, 5)``, where ``batch`` is what ``batch_inputs`` built for that model.

* ``paper`` (``PaperResNet3d``): a 3D ResNet-50 as described by Robinson et al. 2018 — the
  standard ResNet-50 (7³ stem convolution with stride 2, 3³ max pooling, bottleneck stages
  [3, 4, 6, 3] of widths 64/128/256/512 with expansion 4, global average pooling) with every
  kernel made 3-D, on the full 5 × 8 × 224 × 224 input. ~46 M parameters.
* ``fast`` (``FastQcNet``): our design for real time on CPUs. It sees a heart-centred
  112 × 112 crop of the same grid (full resolution, all 8 slices) through in-plane 2D
  convolutions (slices folded into the batch) interleaved with cheap 3-tap convolutions across
  slices, and pools mean and max over the volume; the pooled descriptor is concatenated with
  the segmentation's shape features (``features.py``, standardised with the training set's
  mean and SD, stored in the model) and mapped to the five outputs by a small MLP.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cmrqc_qc_predictor.classes import OUTPUT_CLASSES
from cmrqc_qc_predictor.features import NUM_FEATURES
from cmrqc_qc_predictor.prepare import CHANNELS

PAPER_ARCHITECTURE = "qc-paper-resnet50-3d-v1"
FAST_ARCHITECTURE = "qc-fast-2.5d-v1"


# -- the paper's 3D ResNet-50 ----------------------------------------------------------------


class Bottleneck3d(nn.Module):
    """1³ reduce -> 3³ (strided) -> 1³ expand (×4), batch norm, identity or projection skip."""

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int) -> None:
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = nn.Conv3d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm3d(width)
        self.conv2 = nn.Conv3d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm3d(width)
        self.conv3 = nn.Conv3d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm3d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv3d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm3d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.shortcut(x))


class PaperResNet3d(nn.Module):
    """3D ResNet-50: input ``(N, 5, 8, 224, 224)``, output ``(N, 5)`` in [0, 1]."""

    architecture = PAPER_ARCHITECTURE
    blocks = (3, 4, 6, 3)
    widths = (64, 128, 256, 512)

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv3d(CHANNELS, 64, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm3d(64),
            nn.ReLU(inplace=True),
            nn.MaxPool3d(3, stride=2, padding=1),
        )
        layers: list[nn.Module] = []
        in_channels = 64
        for stage, (count, width) in enumerate(zip(self.blocks, self.widths, strict=True)):
            for index in range(count):
                stride = 2 if stage > 0 and index == 0 else 1
                layers.append(Bottleneck3d(in_channels, width, stride))
                in_channels = width * Bottleneck3d.expansion
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(in_channels, len(OUTPUT_CLASSES))
        for module in self.modules():
            if isinstance(module, nn.Conv3d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        for module in self.modules():
            if isinstance(module, Bottleneck3d):
                nn.init.zeros_(module.bn3.weight)  # each block starts as identity: stable start

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x = self.layers(self.stem(batch["grid"]))
        return torch.sigmoid(self.fc(torch.flatten(self.pool(x), 1)))


# -- the fast 2.5D network -------------------------------------------------------------------


def _conv_bn(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class SliceMix(nn.Module):
    """Residual 3-tap convolution across slices (the only through-plane mixing).

    Equivalent to a (3, 1, 1) Conv3d with zero padding, computed as one 1 × 1 Conv2d to three
    channel groups on the slice-folded layout and two shifted adds: no transposes, and the
    fast MKL-DNN 2D path instead of PyTorch's slow 3D convolution on the CPU.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 3 * channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        nn.init.zeros_(self.bn.weight)

    def forward(self, x: torch.Tensor, slices: int) -> torch.Tensor:
        folded, channels, height, width = x.shape
        taps = self.conv(x).view(folded // slices, slices, 3, channels, height, width)
        mixed = taps[:, :, 1].clone()
        mixed[:, 1:] += taps[:, :-1, 0]  # from the slice before
        mixed[:, :-1] += taps[:, 1:, 2]  # from the slice after
        return torch.relu(x + self.bn(mixed.view(folded, channels, height, width)))


class DownBlock(nn.Module):
    """Strided residual block in-plane (two 3 × 3 convolutions), then slice mixing."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = _conv_bn(in_channels, out_channels, stride=2)
        self.conv2 = nn.Sequential(
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.skip = nn.Sequential(
            nn.AvgPool2d(2, ceil_mode=True),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.mix = SliceMix(out_channels)

    def forward(self, x: torch.Tensor, slices: int) -> torch.Tensor:
        out = torch.relu(self.conv2(self.conv1(x)) + self.skip(x))
        return self.mix(out, slices)


@dataclass(frozen=True)
class FastConfig:
    """Widths of the fast network and whether it estimates the reference (stored with it)."""

    stem: int = 8
    widths: tuple[int, ...] = (16, 32, 64, 96)
    hidden: int = 96
    aux: bool = True
    """Estimate the reference segmentation at 1/4 resolution and compare it with the input."""


AUX_SCALE = 4
"""The reference estimate's pixels are AUX_SCALE × AUX_SCALE crop pixels."""
_COMPARISONS = 9
"""Soft Dice of estimate vs input for BG, LV, LVM, RVC, WH; log volume ratios LV..WH."""


def soft_comparison(estimate: torch.Tensor, segmentation: torch.Tensor) -> torch.Tensor:
    """(N, 9): soft Dice of the estimated reference and the segmentation per class (BG, LV,
    LVM, RVC, WH) and log((1 + estimated volume) / (1 + segmented volume)) for LV..WH.

    Both inputs are class fractions ``(N, 4, S, H, W)`` (BG, LV, LVM, RVC).
    """

    def with_whole_heart(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, 1.0 - x[:, :1]], dim=1)

    p, s = with_whole_heart(estimate), with_whole_heart(segmentation)
    dims = (2, 3, 4)
    p_sum, s_sum = p.sum(dim=dims), s.sum(dim=dims)
    dice = 2.0 * (p * s).sum(dim=dims) / (p_sum + s_sum).clamp_min(1e-3)
    ratio = torch.log1p(p_sum[:, 1:]) - torch.log1p(s_sum[:, 1:])
    return torch.cat([dice, ratio], dim=1)


class FastQcNet(nn.Module):
    """Input ``{"crop": (N, 5, 8, 112, 112), "features": (N, F)}``; output ``(N, 5)`` in [0, 1].

    With ``aux`` (the default) a small head on the two finest feature maps estimates the
    reference segmentation at 28 × 28 per slice (trained with the true labels as a dense
    auxiliary target, ``forward_with_aux``); the soft Dice between that estimate and the input
    segmentation joins the pooled descriptor and the shape features in the final MLP — a
    built-in "segment again and compare", which the Dice regression then corrects.
    """

    architecture = FAST_ARCHITECTURE
    feature_mean: torch.Tensor
    feature_std: torch.Tensor

    def __init__(self, config: FastConfig | None = None) -> None:
        super().__init__()
        self.config = config or FastConfig()
        cfg = self.config
        self.stem = nn.Sequential(
            _conv_bn(CHANNELS, cfg.stem, stride=2), _conv_bn(cfg.stem, cfg.widths[0], stride=2)
        )
        self.stem_mix = SliceMix(cfg.widths[0])
        self.blocks = nn.ModuleList(
            DownBlock(a, b) for a, b in zip(cfg.widths[:-1], cfg.widths[1:], strict=True)
        )
        self.aux_head: nn.Module | None = None
        if cfg.aux:
            self.aux_head = nn.Sequential(
                nn.Conv2d(cfg.widths[0] + cfg.widths[1], 16, 1, bias=False),
                nn.BatchNorm2d(16),
                nn.ReLU(inplace=True),
                nn.Conv2d(16, CHANNELS - 1, 3, padding=1),
            )
        self.register_buffer("feature_mean", torch.zeros(NUM_FEATURES))
        self.register_buffer("feature_std", torch.ones(NUM_FEATURES))
        inputs = 2 * cfg.widths[-1] + NUM_FEATURES + (_COMPARISONS if cfg.aux else 0)
        self.head = nn.Sequential(
            nn.Linear(inputs, cfg.hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(0.1),
            nn.Linear(cfg.hidden, len(OUTPUT_CLASSES)),
        )

    def set_feature_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Standardise features with the training set's statistics (kept in the state dict)."""
        self.feature_mean.copy_(mean)
        self.feature_std.copy_(std.clamp_min(1e-3))

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.forward_with_aux(batch)[0]

    def forward_with_aux(
        self, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(Dice (N, 5), reference logits (N, 4, 8, 28, 28) or None without ``aux``)."""
        crop = batch["crop"]
        count, channels, slices, height, width = crop.shape
        folded = crop.transpose(1, 2).reshape(count * slices, channels, height, width)
        x = self.stem_mix(self.stem(folded), slices)
        logits = None
        parts = []
        for index, block in enumerate(self.blocks):
            finer, x = x, block(x, slices)
            if index == 0 and self.aux_head is not None:
                coarse = F.interpolate(x, size=finer.shape[-2:], mode="nearest")
                logits = self.aux_head(torch.cat([finer, coarse], dim=1))
        x = x.view(count, slices, x.shape[1], -1)
        parts += [x.mean(dim=(1, 3)), x.amax(dim=(1, 3))]
        parts.append((batch["features"] - self.feature_mean) / self.feature_std)
        if logits is not None:
            size = logits.shape[-2:]
            logits = logits.view(count, slices, CHANNELS - 1, *size).transpose(1, 2)
            segmentation = F.avg_pool2d(folded[:, 1:], AUX_SCALE).view(
                count, slices, CHANNELS - 1, *size
            )
            parts.append(
                soft_comparison(torch.softmax(logits, dim=1), segmentation.transpose(1, 2))
            )
        return torch.sigmoid(self.head(torch.cat(parts, dim=1))), logits


def build_model(architecture: str, options: dict[str, object] | None = None) -> nn.Module:
    """A fresh model of ``architecture`` (``PAPER_ARCHITECTURE`` or ``FAST_ARCHITECTURE``).

    Raises:
        ValueError: an unknown architecture.
    """
    if architecture == PAPER_ARCHITECTURE:
        return PaperResNet3d()
    if architecture == FAST_ARCHITECTURE:
        options = options or {}
        config = FastConfig(
            stem=int(options.get("stem", FastConfig.stem)),  # type: ignore[call-overload]
            widths=tuple(options.get("widths", FastConfig.widths)),  # type: ignore[arg-type]
            hidden=int(options.get("hidden", FastConfig.hidden)),  # type: ignore[call-overload]
            aux=bool(options.get("aux", False)),  # artifacts from before the option had none
        )
        return FastQcNet(config)
    raise ValueError(f"unknown QC model architecture {architecture!r}")
