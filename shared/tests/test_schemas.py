"""schemas/ is generated from the models and checked in; drift fails."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jsonschema

from cmrqc_shared.events import VolumeReady
from cmrqc_shared.events.examples import example_volume_ready as sample_volume_event
from cmrqc_shared.schemas import schema_drift, schema_file_name, write_schemas

REPO_SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def test_checked_in_schemas_match_the_event_models() -> None:
    assert schema_drift(REPO_SCHEMAS) == [], "run `uv run cmrqc schemas export`"


def test_a_changed_schema_file_is_reported_as_drift(tmp_path: Path) -> None:
    shutil.copytree(REPO_SCHEMAS, tmp_path / "schemas")
    target = tmp_path / "schemas" / schema_file_name(VolumeReady)
    schema = json.loads(target.read_text())
    schema["properties"].pop("volume")
    target.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
    (tmp_path / "schemas" / "old.schema.json").write_text("{}\n")
    assert schema_drift(tmp_path / "schemas") == [
        f"differs: {schema_file_name(VolumeReady)}",
        "stale: old.schema.json",
    ]


def test_export_writes_every_schema_and_removes_stale_files(tmp_path: Path) -> None:
    (tmp_path / "gone.schema.json").write_text("{}")
    write_schemas(tmp_path)
    assert schema_drift(tmp_path) == []
    assert not (tmp_path / "gone.schema.json").exists()


def test_a_real_event_validates_against_its_exported_schema() -> None:
    schema = json.loads((REPO_SCHEMAS / schema_file_name(VolumeReady)).read_text())
    jsonschema.validate(json.loads(sample_volume_event(1, "run").to_bytes()), schema)


def test_an_invalid_event_fails_its_exported_schema() -> None:
    schema = json.loads((REPO_SCHEMAS / schema_file_name(VolumeReady)).read_text())
    payload = json.loads(sample_volume_event(1, "run").to_bytes())
    payload["volume"]["sha256"] = "not-a-hash"
    try:
        jsonschema.validate(payload, schema)
    except jsonschema.ValidationError:
        return
    raise AssertionError("a malformed sha256 passed the exported schema")
