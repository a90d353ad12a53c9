"""Seed ranges never overlap: no subject is in two splits or two purposes."""

from __future__ import annotations

import itertools

import pytest

from cmrqc_shared.datasets.splits import ALL_RANGES, SEGMENTER_TEST


def test_no_two_seed_ranges_overlap() -> None:
    for a, b in itertools.combinations(ALL_RANGES, 2):
        assert a.stop <= b.start or b.stop <= a.start, f"{a} overlaps {b}"


def test_asking_more_seeds_than_a_range_holds_fails() -> None:
    with pytest.raises(ValueError, match="asked"):
        SEGMENTER_TEST.seeds(SEGMENTER_TEST.stop - SEGMENTER_TEST.start + 1)


def test_membership_follows_the_range_bounds() -> None:
    assert SEGMENTER_TEST.start in SEGMENTER_TEST
    assert SEGMENTER_TEST.stop not in SEGMENTER_TEST
