"""Reference sets: content hash, the synthetic set's seeds and cache, users' folders."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from cmrqc_rca_labeller.references import (
    ReferenceSet,
    _synthetic_items,
    load_reference_folder,
    reference_set_hash,
    synthetic_reference_set,
)
from cmrqc_rca_labeller.volume import CardiacVolume
from cmrqc_shared.datasets.splits import RCA_REFERENCES
from cmrqc_shared.synth import LPS_TO_RAS, render_study, to_nifti_order, write_study


@pytest.fixture(scope="module")
def two_references() -> list[tuple[str, CardiacVolume]]:
    return list(_synthetic_items(2))


def test_the_hash_is_stable_and_independent_of_listing_order(
    two_references: list[tuple[str, CardiacVolume]],
) -> None:
    first = reference_set_hash(two_references)
    assert first == reference_set_hash(list(reversed(two_references)))
    assert len(first) == 64 and int(first, 16) >= 0


def test_the_hash_changes_when_one_label_voxel_or_the_spacing_changes(
    two_references: list[tuple[str, CardiacVolume]],
) -> None:
    original = reference_set_hash(two_references)
    (name, volume), other = two_references
    assert volume.labels is not None
    labels = volume.labels.copy()
    labels[labels.shape[0] // 2, 0, 0] = 3
    relabelled = [(name, CardiacVolume(volume.image, volume.affine, labels)), other]
    stretched_affine = volume.affine.copy()
    stretched_affine[:3, 0] *= 1.01  # columns 1 % wider
    stretched = [(name, CardiacVolume(volume.image, stretched_affine, volume.labels)), other]

    assert reference_set_hash(relabelled) != original
    assert reference_set_hash(stretched) != original
    assert reference_set_hash([(name + "x", volume), other]) != original


def test_the_synthetic_set_draws_only_reference_seeds_and_both_phases(
    small_reference_set: ReferenceSet,
) -> None:
    ids = [r.reference_id for r in small_reference_set.references]
    seeds = [int(i.split("-")[1]) for i in ids]
    assert all(seed in RCA_REFERENCES for seed in seeds)
    assert {i.rsplit("-", 1)[1] for i in ids} == {"ED", "ES"}


def test_a_cached_synthetic_set_reloads_identically(
    small_reference_set: ReferenceSet, reference_cache: Path
) -> None:
    again = synthetic_reference_set(small_reference_set.size, cache_dir=reference_cache)

    assert again.content_hash == small_reference_set.content_hash
    for a, b in zip(again.references, small_reference_set.references, strict=True):
        assert a.reference_id == b.reference_id
        assert np.array_equal(a.image, b.image) and np.array_equal(a.labels, b.labels)


def test_a_folder_of_nifti_pairs_hashes_like_the_same_volumes(tmp_path: Path) -> None:
    items = list(_synthetic_items(2))
    for name, volume in items:
        assert volume.labels is not None
        affine_ras = LPS_TO_RAS @ volume.affine
        nib.save(
            nib.Nifti1Image(to_nifti_order(volume.image.astype(np.float32)), affine_ras),
            tmp_path / f"{name}_image.nii.gz",
        )
        nib.save(
            nib.Nifti1Image(to_nifti_order(volume.labels), affine_ras),
            tmp_path / f"{name}_labels.nii.gz",
        )

    loaded = load_reference_folder(tmp_path, cache_dir=tmp_path / "cache")

    assert loaded.content_hash == reference_set_hash(items)
    assert [r.reference_id for r in loaded.references] == [name for name, _ in items]


def test_a_folder_in_the_synth_layout_reads_its_dicom_and_labels(tmp_path: Path) -> None:
    seed = RCA_REFERENCES.start
    study = render_study(seed, phases=("ED",))
    write_study(study, tmp_path / "subject-a")

    loaded = load_reference_folder(tmp_path, cache_dir=tmp_path / "cache")

    (reference,) = loaded.references
    expected = study.phase("ED")
    assert reference.reference_id == "subject-a"
    volume = CardiacVolume(expected.image, expected.affine, expected.labels)
    assert loaded.content_hash == reference_set_hash([("subject-a", volume)])


def test_an_empty_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no references"):
        load_reference_folder(tmp_path)
