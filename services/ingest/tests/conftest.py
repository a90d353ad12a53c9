"""Fixtures of the ingest tests: small synthetic studies, settings on free ports, services.

Synthetic subjects come from the DEMO seed range; matrices are small (64-96) so the whole
suite stays fast. ``RecordingPublisher`` is the plain in-process sink the pipeline publishes
to when a test is about DICOM, not Kafka; tests marked ``kafka`` use the real broker.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cmrqc_ingest.pipeline import IngestPipeline
from cmrqc_ingest.service import IngestService
from cmrqc_ingest.settings import IngestSettings
from cmrqc_shared.blobs import BlobStore, open_blob_store
from cmrqc_shared.synth import SynthConfig, SyntheticStudy, render_study, write_dicom_series

sys.path.insert(0, str(Path(__file__).parent))

from ingest_testing import SEED0, SMALL, RecordingPublisher, make_settings

logging.getLogger("pynetdicom").setLevel(logging.WARNING)

StudyFactory = Callable[..., tuple[SyntheticStudy, list[Path]]]


@pytest.fixture
def make_study(tmp_path: Path) -> StudyFactory:
    """Render a small synthetic study and write it as DICOM; returns (study, paths)."""
    counter = iter(range(1000))

    def factory(
        seed: int = SEED0, *, enhanced: bool = False, config: SynthConfig = SMALL
    ) -> tuple[SyntheticStudy, list[Path]]:
        study = render_study(seed, config)
        folder = tmp_path / f"study-{seed}-{next(counter)}"
        return study, write_dicom_series(study, folder, enhanced=enhanced)

    return factory


@pytest.fixture
def settings(tmp_path: Path, env_clean: pytest.MonkeyPatch) -> IngestSettings:
    return make_settings(tmp_path)


@pytest.fixture
def blobs(settings: IngestSettings) -> Iterator[BlobStore]:
    store = open_blob_store(settings.blobs.url)
    yield store
    store.close()


@pytest.fixture
def recorder() -> RecordingPublisher:
    return RecordingPublisher()


@pytest.fixture
def pipeline(
    settings: IngestSettings, blobs: BlobStore, recorder: RecordingPublisher
) -> Iterator[IngestPipeline]:
    """An open pipeline (no network) publishing to ``recorder``."""
    pipe = IngestPipeline(settings, blobs=blobs, publisher=recorder)
    pipe.open()
    yield pipe
    pipe.close()


@pytest.fixture
def service(
    settings: IngestSettings, blobs: BlobStore, recorder: RecordingPublisher
) -> Iterator[IngestService]:
    """A started service on free ports publishing to ``recorder`` (no Kafka)."""
    svc = IngestService(settings, publisher=recorder, blobs=blobs)
    svc.start()
    yield svc
    svc.stop(grace_s=2)
