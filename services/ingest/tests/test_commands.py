"""The ``cmrqc`` subcommands of the ingest package, through the real CLI and broker."""

from __future__ import annotations

from pathlib import Path

import pytest

from cmrqc_cli.main import main as cmrqc
from cmrqc_shared.bus.publisher import read_events
from cmrqc_shared.events import VolumeReady
from cmrqc_shared.settings import KafkaSettings
from cmrqc_shared.synth import write_ground_truth_nifti


@pytest.fixture
def ingest_env(
    tmp_path: Path, kafka: KafkaSettings, env_clean: pytest.MonkeyPatch
) -> KafkaSettings:
    env_clean.setenv("CMRQC_INGEST_KAFKA__BOOTSTRAP_SERVERS", kafka.bootstrap_servers)
    env_clean.setenv("CMRQC_INGEST_KAFKA__TOPIC_NAMESPACE", kafka.topic_namespace)
    env_clean.setenv("CMRQC_INGEST_BLOBS__URL", f"file://{tmp_path / 'blobs'}")
    env_clean.setenv("CMRQC_INGEST_SPOOL_DIR", str(tmp_path / "spool"))
    return kafka


@pytest.mark.kafka
def test_cmrqc_ingest_dir_publishes_a_folders_study(  # type: ignore[no-untyped-def]
    make_study, ingest_env: KafkaSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    _, paths = make_study()
    assert cmrqc(["ingest-dir", str(paths[0].parent)]) == 0
    assert "1 published (2 volumes)" in capsys.readouterr().out
    events = read_events(ingest_env, VolumeReady, expected=2, timeout_s=20)
    assert sorted(e.cardiac_phase.value for e in events) == ["ED", "ES"]


@pytest.mark.kafka
def test_cmrqc_import_nifti_publishes_ed_and_es_with_ground_truth(  # type: ignore[no-untyped-def]
    make_study, ingest_env: KafkaSettings, tmp_path: Path
) -> None:
    study, _ = make_study()
    write_ground_truth_nifti(study, tmp_path / "nifti" / "s1", include_images=True)
    assert cmrqc(["import-nifti", str(tmp_path / "nifti")]) == 0
    events = read_events(ingest_env, VolumeReady, expected=2, timeout_s=20)
    assert all(e.ground_truth is not None for e in events)
