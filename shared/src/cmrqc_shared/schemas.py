"""JSON Schema of every event, generated from the pydantic models, for consumers in any language.

``schemas/`` in the repository holds the output of ``write_schemas``; a test (and
``cmrqc schemas check``) fails when the models change and ``schemas/`` is not regenerated.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cmrqc_shared.events import EVENT_TYPES, Event

INDEX_FILE = "index.json"


def schema_file_name(event_type: type[Event]) -> str:
    """e.g. ``cmrqc.volumes.v1.VolumeReady.schema.json``."""
    return f"{event_type.TOPIC}.{event_type.__name__}.schema.json"


def event_schema(event_type: type[Event]) -> dict[str, Any]:
    """The JSON Schema of one event type (serialisation mode: what is on the wire)."""
    schema = event_type.model_json_schema(mode="serialization")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"https://cmrqc.example/schemas/{schema_file_name(event_type)}"
    schema["x-topic"] = event_type.TOPIC
    schema["x-schema-name"] = event_type.SCHEMA_NAME
    schema["x-schema-version"] = event_type.SCHEMA_VERSION
    schema["x-key"] = "SeriesInstanceUID" if event_type.TOPIC != "cmrqc.models.v1" else "model_name"
    return schema


def rendered_schemas() -> dict[str, str]:
    """File name -> file content for every schema file, plus the index."""
    files = {
        schema_file_name(t): json.dumps(event_schema(t), indent=2, sort_keys=True) + "\n"
        for t in EVENT_TYPES
    }
    index = {
        t.TOPIC: {
            "schema_name": t.SCHEMA_NAME,
            "schema_version": t.SCHEMA_VERSION,
            "file": schema_file_name(t),
        }
        for t in EVENT_TYPES
    }
    files[INDEX_FILE] = json.dumps(index, indent=2, sort_keys=True) + "\n"
    return files


def write_schemas(out_dir: Path) -> list[Path]:
    """Write every schema file into ``out_dir``, removing stale ``*.json`` files there."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = rendered_schemas()
    for stale in out_dir.glob("*.json"):
        if stale.name not in files:
            stale.unlink()
    written = []
    for name, content in files.items():
        path = out_dir / name
        path.write_text(content)
        written.append(path)
    return written


def schema_drift(out_dir: Path) -> list[str]:
    """Differences between ``out_dir`` and the models, one line each (empty: no drift)."""
    files = rendered_schemas()
    drift = []
    for name, content in files.items():
        path = out_dir / name
        if not path.exists():
            drift.append(f"missing: {name}")
        elif path.read_text() != content:
            drift.append(f"differs: {name}")
    drift.extend(
        f"stale: {path.name}" for path in sorted(out_dir.glob("*.json")) if path.name not in files
    )
    return drift
