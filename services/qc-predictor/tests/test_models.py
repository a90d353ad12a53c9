"""Both networks: output shape and range; the paper's architecture as described."""

from __future__ import annotations

import torch

from cmrqc_qc_predictor.features import NUM_FEATURES
from cmrqc_qc_predictor.models import Bottleneck3d, FastQcNet, PaperResNet3d


def test_the_fast_network_maps_a_batch_to_five_dice_values_in_zero_one() -> None:
    torch.manual_seed(0)
    network = FastQcNet().eval()
    batch = {"crop": torch.rand(3, 5, 8, 112, 112), "features": torch.randn(3, NUM_FEATURES)}
    with torch.inference_mode():
        output = network(batch)
    assert output.shape == (3, 5)
    assert float(output.min()) >= 0.0 and float(output.max()) <= 1.0


def test_the_paper_network_is_a_3d_resnet50_with_bottlenecks_3_4_6_3() -> None:
    network = PaperResNet3d().eval()
    blocks = [m for m in network.modules() if isinstance(m, Bottleneck3d)]
    assert len(blocks) == 16  # 3 + 4 + 6 + 3
    convolutions = [m for m in network.modules() if isinstance(m, torch.nn.Conv3d)]
    weighted_layers = 1 + 3 * len(blocks) + 1  # stem + 3 per bottleneck + fc = 50
    assert weighted_layers == 50 and len(convolutions) == 1 + 3 * 16 + 4  # + 4 projections
    assert 45e6 < sum(p.numel() for p in network.parameters()) < 48e6


def test_the_paper_network_maps_the_full_grid_to_five_dice_values_in_zero_one() -> None:
    torch.manual_seed(0)
    network = PaperResNet3d().eval()
    with torch.inference_mode():
        output = network({"grid": torch.rand(1, 5, 8, 224, 224)})
    assert output.shape == (1, 5)
    assert float(output.min()) >= 0.0 and float(output.max()) <= 1.0
