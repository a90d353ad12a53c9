"""``cmrqc rca`` on files, and the settings' environment names."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cmrqc_cli.main import main as cmrqc
from cmrqc_rca_labeller.references import ReferenceSet
from cmrqc_rca_labeller.settings import RcaLabellerSettings
from cmrqc_shared.datasets.splits import QC_TEST
from cmrqc_shared.synth import render_study


def test_cmrqc_rca_prints_a_json_estimate_for_npy_files(
    tmp_path: Path,
    small_reference_set: ReferenceSet,
    reference_cache: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    phase = render_study(QC_TEST.start + 30, phases=("ED",)).phase("ED")
    np.save(tmp_path / "image.npy", phase.image)
    np.save(tmp_path / "seg.npy", phase.labels)
    row, column = phase.pixel_spacing_mm

    code = cmrqc(
        [
            "rca",
            "--image",
            str(tmp_path / "image.npy"),
            "--seg",
            str(tmp_path / "seg.npy"),
            "--spacing",
            str(phase.slice_spacing_mm),
            str(row),
            str(column),
            "--k",
            "6",
            "--cache-dir",
            str(reference_cache),
            "--max-references",
            "2",
        ]
    )

    assert code == 0
    output = json.loads(capsys.readouterr().out)
    assert output["reference_set"] == small_reference_set.content_hash
    assert set(output["estimated_dsc"]) == {"BG", "LV", "LVM", "RVC", "WH"}
    assert output["references_registered"] == 2 and output["references_screened"] == 6
    assert output["estimated_dsc"]["WH"] > 0.7


def test_cmrqc_rca_explains_a_npy_image_without_spacing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    np.save(tmp_path / "image.npy", np.zeros((4, 8, 8), np.float32))
    np.save(tmp_path / "seg.npy", np.zeros((4, 8, 8), np.uint8))

    code = cmrqc(
        ["rca", "--image", str(tmp_path / "image.npy"), "--seg", str(tmp_path / "seg.npy")]
    )

    assert code == 2
    assert "--spacing" in capsys.readouterr().err


def test_settings_read_the_service_prefix(env_clean: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env_clean.setenv("CMRQC_RCA_LABELLER_REFERENCE_COUNT", "7")
    env_clean.setenv("CMRQC_RCA_LABELLER_REFERENCE_SET_PATH", str(tmp_path))
    env_clean.setenv("CMRQC_RCA_LABELLER_RUNNER__GROUP_ID", "rca-x")
    env_clean.setenv("CMRQC_RCA_LABELLER_BLOBS__URL", "file:///tmp/blobs")

    settings = RcaLabellerSettings()

    assert settings.reference_count == 7 and settings.reference_set_path == tmp_path
    assert settings.runner.group_id == "rca-x"
    assert settings.resolved_queue_url() == "redis://127.0.0.1:6379/0"
