"""Fixtures of the RCA labeller tests: a small synthetic reference set, cached per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from cmrqc_rca_labeller.engine import EngineConfig, ReferenceBank
from cmrqc_rca_labeller.references import ReferenceSet, synthetic_reference_set

#: Small enough for CPU tests, large enough for RCA to find a similar heart.
TEST_K = 6

FAST = EngineConfig(
    screen_keep=TEST_K,
    refine_keep=4,
    coarse_iterations=15,
    fine_iterations=8,
    ffd_iterations=12,
    search_angles=24,
    device="cpu",
)


@pytest.fixture(scope="session")
def fast_config() -> EngineConfig:
    """Fewer iterations and references than production: CPU tests in seconds."""
    return FAST


@pytest.fixture(scope="session")
def reference_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("rca-references")


@pytest.fixture(scope="session")
def small_reference_set(reference_cache: Path) -> ReferenceSet:
    return synthetic_reference_set(TEST_K, cache_dir=reference_cache)


@pytest.fixture(scope="session")
def small_bank(small_reference_set: ReferenceSet) -> ReferenceBank:
    return ReferenceBank.build(small_reference_set.references, FAST)
