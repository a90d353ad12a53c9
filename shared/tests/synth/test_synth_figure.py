"""Smoke test of the example page writer."""

from __future__ import annotations

from pathlib import Path

import pytest

from cmrqc_shared.synth import write_example_page


def test_example_page_is_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out = write_example_page([5], tmp_path / "page.png")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 50_000
