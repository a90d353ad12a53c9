"""The committed model and checkpoints: safe loading, accuracy on held-out subjects, shapes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from cmrqc_segmenter import (
    CheckpointError,
    Segmenter,
    builtin_weights_path,
    load_checkpoint,
    load_model,
)
from cmrqc_segmenter.checkpoints import read_metadata, save_checkpoint
from cmrqc_segmenter.contract import InputContract
from cmrqc_segmenter.data import LabelledVolume, render_volumes
from cmrqc_segmenter.metrics import dice_per_class
from cmrqc_segmenter.model import UNet2D, UNetConfig
from cmrqc_shared.datasets.splits import SEGMENTER_TEST, SEGMENTER_TRAIN, SEGMENTER_VAL
from cmrqc_shared.synth import SynthConfig

TEST_SUBJECTS = tuple(SEGMENTER_TEST.seeds(3))  # as in conftest.py


def _mean_scores(segmenter: Segmenter, volumes: list[LabelledVolume]) -> dict[str, float]:
    results = segmenter.segment_many([(v.image, v.pixel_spacing_mm) for v in volumes])
    scores = [dice_per_class(r.labels, v.labels) for r, v in zip(results, volumes, strict=True)]
    return {name: float(np.mean([s[name] for s in scores])) for name in scores[0]}


def test_the_committed_weights_are_a_small_safetensors_file_with_a_model_card() -> None:
    path = builtin_weights_path()
    assert path.stat().st_size <= 20 * 1024 * 1024
    metadata = read_metadata(path)
    assert metadata["name"] == "cmrqc-unet2d" and int(metadata["step"]) > 0
    card = (path.parent / "MODEL_CARD.md").read_text()
    assert "SEGMENTER_TEST" in card and "Dice" in card


def test_the_committed_model_segments_held_out_subjects_well(
    segmenter: Segmenter, test_volumes: list[LabelledVolume]
) -> None:
    assert all(seed in SEGMENTER_TEST for seed in TEST_SUBJECTS)
    assert not any(seed in SEGMENTER_TRAIN or seed in SEGMENTER_VAL for seed in TEST_SUBJECTS)
    scores = _mean_scores(segmenter, test_volumes)
    foreground = np.mean([scores["LV"], scores["LVM"], scores["RVC"]])
    assert foreground > 0.85, scores
    assert scores["LV"] > 0.88 and scores["LVM"] > 0.78 and scores["RVC"] > 0.80, scores


def test_labels_have_the_input_shape_and_the_label_convention(
    segmenter: Segmenter, test_volumes: list[LabelledVolume]
) -> None:
    volume = test_volumes[1]
    result = segmenter.segment(volume.image, volume.pixel_spacing_mm)
    assert result.labels.shape == volume.image.shape and result.labels.dtype == np.uint8
    assert set(np.unique(result.labels)) <= {0, 1, 2, 3}
    assert set(result.timings_ms) == {"preprocess", "inference", "postprocess"}


def test_batched_and_single_volume_calls_give_the_same_labels(
    segmenter: Segmenter, test_volumes: list[LabelledVolume]
) -> None:
    volumes = test_volumes[:2]
    batched = segmenter.segment_many([(v.image, v.pixel_spacing_mm) for v in volumes])
    for volume, result in zip(volumes, batched, strict=True):
        single = segmenter.segment(volume.image, volume.pixel_spacing_mm)
        assert (single.labels != result.labels).mean() < 1e-3


def test_a_single_slice_is_segmented(
    segmenter: Segmenter, test_volumes: list[LabelledVolume]
) -> None:
    volume = test_volumes[0]
    k = int(np.argmax((volume.labels > 0).sum(axis=(1, 2))))
    result = segmenter.segment(volume.image[k], volume.pixel_spacing_mm)
    assert result.labels.shape == (1, *volume.image.shape[1:])
    assert dice_per_class(result.labels[0], volume.labels[k])["WH"] > 0.85


def test_a_thirty_slice_stack_is_segmented(segmenter: Segmenter) -> None:
    config = SynthConfig(n_slices_range=(30, 30), slice_thickness_range_mm=(3.0, 4.0))
    volume = render_volumes(SEGMENTER_TEST.start + 50, config)[0]
    result = segmenter.segment(volume.image, volume.pixel_spacing_mm)
    assert result.labels.shape == volume.image.shape == (30, *volume.image.shape[1:])
    assert dice_per_class(result.labels, volume.labels)["WH"] > 0.8


def test_a_fine_512_matrix_is_segmented(segmenter: Segmenter) -> None:
    config = SynthConfig(
        matrix_range=(512, 512), pixel_spacing_range_mm=(0.7, 0.75), n_slices_range=(8, 8)
    )
    volume = render_volumes(SEGMENTER_TEST.start + 51, config)[0]
    assert volume.image.shape[1:] == (512, 512)
    result = segmenter.segment(volume.image, volume.pixel_spacing_mm)
    assert result.labels.shape == volume.image.shape
    assert dice_per_class(result.labels, volume.labels)["WH"] > 0.85


def test_strongly_anisotropic_pixels_are_segmented(
    segmenter: Segmenter, test_volumes: list[LabelledVolume]
) -> None:
    volume = test_volumes[0]
    image, labels = volume.image[:, :, ::3], volume.labels[:, :, ::3]
    spacing = (volume.pixel_spacing_mm[0], 3 * volume.pixel_spacing_mm[1])
    result = segmenter.segment(image, spacing)
    assert result.labels.shape == image.shape
    assert dice_per_class(result.labels, labels)["WH"] > 0.8


def test_a_heart_at_the_edge_of_a_wide_field_is_found_by_a_second_pass(
    segmenter: Segmenter, test_volumes: list[LabelledVolume]
) -> None:
    volume = test_volumes[0]
    cols = volume.image.shape[2]
    _, heart_col = volume.heart_centre()
    # Pad on the left so that the heart sits ~115 mm right of the image centre: half outside
    # the first, centred field (160 px x 1.5 mm = 240 mm).
    offset_px = 115.0 / volume.pixel_spacing_mm[1]
    pad = round(2 * (offset_px - heart_col + (cols - 1) / 2))
    assert pad > 0
    image = np.pad(volume.image, ((0, 0), (0, 0), (pad, 0)))
    labels = np.pad(volume.labels, ((0, 0), (0, 0), (pad, 0)))
    first_pass_only = segmenter.segment(image, volume.pixel_spacing_mm, recentre=False)
    result = segmenter.segment(image, volume.pixel_spacing_mm)
    assert result.recentred and not first_pass_only.recentred
    assert dice_per_class(result.labels, labels)["WH"] > 0.9
    assert (
        dice_per_class(result.labels, labels)["WH"]
        > dice_per_class(first_pass_only.labels, labels)["WH"]
    )


def test_a_checkpoint_round_trips_its_weights_contract_and_version(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = UNet2D(UNetConfig(base_channels=4, levels=2)).eval()
    contract = InputContract(spacing_mm=2.0, size=64)
    path = save_checkpoint(
        tmp_path / "c.safetensors", model, contract, version="v-test", step=7, total_steps=10
    )
    loaded = load_checkpoint(path, device="cpu")
    assert loaded.contract == contract and loaded.identity.version == "v-test"
    assert loaded.identity.artifact_sha256 and len(loaded.identity.artifact_sha256) == 64
    x = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        assert torch.allclose(model(x), loaded.network(x), atol=1e-5)


def test_files_that_are_not_our_checkpoints_are_refused(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file at all")
    with pytest.raises(CheckpointError):
        load_checkpoint(garbage)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign), metadata={"format": "something-else"})
    with pytest.raises(CheckpointError):
        load_checkpoint(foreign)
    pickled = tmp_path / "model.pt"
    torch.save({"weights": torch.zeros(2)}, pickled)  # a pickle, not TorchScript
    with pytest.raises(CheckpointError):
        load_model(pickled, device="cpu")
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "missing.safetensors")
