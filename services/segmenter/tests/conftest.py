"""Fixtures of the segmenter tests: a few held-out synthetic subjects and the committed model."""

from __future__ import annotations

import pytest

from cmrqc_segmenter import Segmenter, load_builtin
from cmrqc_segmenter.data import LabelledVolume, volumes_of
from cmrqc_shared.datasets.splits import SEGMENTER_TEST

TEST_SUBJECTS = tuple(SEGMENTER_TEST.seeds(3))
"""Held-out subjects: never seen in training (SEGMENTER_TRAIN) nor validation."""


@pytest.fixture(scope="session")
def test_volumes() -> list[LabelledVolume]:
    """ED and ES volumes of three test-split subjects (rendered once per session, ~1.5 s)."""
    return volumes_of(TEST_SUBJECTS)


@pytest.fixture(scope="session")
def segmenter() -> Segmenter:
    """The committed U-Net on the CPU."""
    return load_builtin(device="cpu")
