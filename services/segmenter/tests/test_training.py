"""Training: the checkpoint schedule, the files a run writes, resuming where it stopped."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from cmrqc_segmenter import checkpoint_steps, list_checkpoints, load_checkpoint
from cmrqc_segmenter.augment import SliceSampler
from cmrqc_segmenter.contract import InputContract
from cmrqc_segmenter.data import LabelledVolume
from cmrqc_segmenter.training import TrainConfig, TrainResult, segmentation_loss, train

pytestmark = [pytest.mark.slow]

TINY = TrainConfig(
    train_subjects=1,
    val_subjects=1,
    steps=4,
    batch_size=2,
    patch_size=32,
    base_channels=4,
    levels=2,
    precision="fp32",
    val_every=1000,
    resume_every=1000,
)


def test_checkpoints_are_kept_from_early_to_late_training() -> None:
    assert checkpoint_steps(3000) == [30, 150, 600, 1500, 3000]
    assert checkpoint_steps(4) == [1, 2, 4]


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[TrainResult, Path]:
    """A tiny run trained without interruption, and its subject cache."""
    root = tmp_path_factory.mktemp("training")
    result = train(TINY, root / "straight", cache_dir=root / "cache", progress=False)
    assert result is not None
    return result, root / "cache"


def test_a_run_writes_checkpoints_weights_curve_and_summary(
    straight_run: tuple[TrainResult, Path],
) -> None:
    result, _ = straight_run
    run = result.out_dir
    assert [step for step, _ in list_checkpoints(run)] == [1, 2, 4]
    for name in ("final.safetensors", "training_curve.png", "history.json", "resume.pt"):
        assert (run / name).is_file(), name
    summary = json.loads((run / "summary.json").read_text())
    assert summary["train_seeds"] == [0, 1] and summary["val_seeds"] == [10_000, 10_001]
    early = load_checkpoint(list_checkpoints(run)[0][1], device="cpu")
    assert early.identity.version == "seed0-step1"


def test_an_interrupted_run_resumes_to_the_same_weights(
    straight_run: tuple[TrainResult, Path], tmp_path: Path
) -> None:
    straight, cache = straight_run
    stopped = train(TINY, tmp_path / "resumed", cache_dir=cache, progress=False, stop_after=2)
    assert stopped is None and not (tmp_path / "resumed" / "final.safetensors").exists()
    resumed = train(TINY, tmp_path / "resumed", cache_dir=cache, progress=False)
    assert resumed is not None
    a, b = load_file(str(straight.final)), load_file(str(resumed.final))
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)


def test_training_samples_are_soft_labels_on_the_network_grid(
    test_volumes: list[LabelledVolume],
) -> None:
    sampler = SliceSampler(test_volumes[:2], InputContract(), patch_size=64)
    x, target = sampler.batch(np.random.default_rng(0), 8)
    assert x.shape == (8, 3, 64, 64) and target.shape == (8, 4, 64, 64)
    assert torch.allclose(target.sum(dim=1), torch.ones(8, 64, 64), atol=1e-5)
    assert target[:, 1:].sum() > 0  # the heart is in most fields
    perfect = torch.log(target.clamp_min(1e-6)) * 50
    assert float(segmentation_loss(perfect, target)) < float(
        segmentation_loss(torch.zeros_like(target), target)
    )
