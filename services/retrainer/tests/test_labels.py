"""The label store against a real Redis: ranks of sources, splits by series, the watermark."""

from __future__ import annotations

import pytest

from cmrqc_retrainer.labels import LabelStore, split_of
from cmrqc_shared.blobs import BlobStore

from .conftest import labelled

pytestmark = [pytest.mark.redis]


def test_ground_truth_outranks_rca_and_a_later_rca_label_does_not_replace_it(
    store: LabelStore, blobs: BlobStore, synthetic_cases: list
) -> None:  # type: ignore[type-arg]
    rca = labelled(
        blobs,
        synthetic_cases[0],
        0,
        source="rca",
        dsc=dict.fromkeys(["BG", "LV", "LVM", "RVC", "WH"], 0.5),
    )
    truth = labelled(blobs, synthetic_cases[0], 0, source="groundtruth")
    assert store.record(rca) == "added"
    assert store.record(rca) == "kept"  # redelivery
    assert store.record(truth) == "upgraded"
    late = labelled(blobs, synthetic_cases[0], 0, source="rca", dsc=rca.dsc)
    assert store.record(late) == "kept"
    stored = store.get("seg-0")
    assert stored is not None and stored.source == "groundtruth" and stored.dsc == truth.dsc


def test_a_series_stays_on_one_side_and_the_holdout_share_is_about_right() -> None:
    sides = [split_of(f"1.2.840.{i}", 0.2) for i in range(4000)]
    assert 0.17 < sides.count("holdout") / len(sides) < 0.23
    assert all(split_of(f"1.2.840.{i}", 0.2) == sides[i] for i in range(100))


def test_new_labels_are_counted_from_the_watermark_which_never_moves_back(
    store: LabelStore, blobs: BlobStore, synthetic_cases: list
) -> None:  # type: ignore[type-arg]
    for index in range(12):
        store.record(labelled(blobs, synthetic_cases[index], index))
    counts = store.counts()
    assert counts["train"] + counts["holdout"] == 12 and counts["new"] == counts["train"]
    top = store.latest_training_seq()
    store.set_watermark(top)
    assert store.new_count() == 0
    store.set_watermark(1)  # a stale writer cannot move it back
    assert store.watermark() == top
    upgraded = next(c for c in store.training_cases() if c.source == "rca")
    store.record(
        labelled(
            blobs,
            synthetic_cases[0],
            int(upgraded.segmentation_event_id[4:]),
            source="groundtruth",
            series=upgraded.series_instance_uid,
        )
    )
    assert store.new_count() == 1  # an upgrade is a new label for training
