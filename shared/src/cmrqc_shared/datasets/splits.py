"""Disjoint seed ranges of the synthetic generator, one per purpose and split.

Every model and evaluation draws its synthetic subjects from exactly one of these ranges, so
no subject is ever in two splits or two purposes (a segmenter's training subjects never
appear in the QC predictor's test split, the RCA reference set is disjoint from all of them).
A test checks that the ranges do not overlap.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Split(StrEnum):
    TRAIN = "train"
    VAL = "val"
    TEST = "test"


@dataclass(frozen=True)
class SeedRange:
    """Seeds ``start`` … ``stop - 1`` of the synthetic generator."""

    purpose: str
    split: Split | None
    start: int
    stop: int

    def seeds(self, count: int | None = None) -> range:
        """The first ``count`` seeds of the range (all of it by default).

        Raises:
            ValueError: more seeds asked for than the range holds.
        """
        size = self.stop - self.start
        if count is None:
            count = size
        if not 0 <= count <= size:
            raise ValueError(f"{self.purpose}/{self.split}: asked {count} seeds, range has {size}")
        return range(self.start, self.start + count)

    def __contains__(self, seed: object) -> bool:
        return isinstance(seed, int) and self.start <= seed < self.stop


SEGMENTER_TRAIN = SeedRange("segmenter", Split.TRAIN, 0, 10_000)
SEGMENTER_VAL = SeedRange("segmenter", Split.VAL, 10_000, 11_000)
SEGMENTER_TEST = SeedRange("segmenter", Split.TEST, 11_000, 12_000)

QC_TRAIN = SeedRange("qc-dataset", Split.TRAIN, 20_000, 28_000)
QC_VAL = SeedRange("qc-dataset", Split.VAL, 28_000, 29_000)
QC_TEST = SeedRange("qc-dataset", Split.TEST, 29_000, 30_000)

RCA_HOLDOUT = SeedRange("rca-holdout", Split.TEST, 30_000, 32_000)
"""A second held-out test range for the RCA labeller's estimator choices, drawn the same way
as QC_TEST. Added on 2026-11-29, when every QC_TEST scan had been used to judge a
preregistered rule (``services/rca-labeller/docs/preregistration.txt``); each of its scans is
evaluated for one rule only: scans 1-1000 judged the joint calibration, 1001-2000 the next."""

RCA_REFERENCES = SeedRange("rca-references", None, 90_000, 91_000)
DEMO = SeedRange("demo-and-simulator", None, 100_000, 1_000_000)

ALL_RANGES: tuple[SeedRange, ...] = (
    SEGMENTER_TRAIN,
    SEGMENTER_VAL,
    SEGMENTER_TEST,
    QC_TRAIN,
    QC_VAL,
    QC_TEST,
    RCA_HOLDOUT,
    RCA_REFERENCES,
    DEMO,
)
