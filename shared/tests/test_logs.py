"""JSON-lines logs carry correlation ids and never patient identifiers."""

from __future__ import annotations

import io
import json
import logging

from cmrqc_shared.logs import (
    IdentifierRedactionFilter,
    JsonLinesFormatter,
    correlation,
)


def _capture() -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonLinesFormatter("svc"))
    handler.addFilter(IdentifierRedactionFilter())
    logger = logging.getLogger(f"test.logs.{id(stream)}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger, stream


def test_log_lines_inside_a_correlation_block_carry_its_ids() -> None:
    logger, stream = _capture()
    with correlation(series_instance_uid="1.2.3", event_id="e1"):
        logger.info("segmented", extra={"slices": 10})
    logger.info("outside")
    inside, outside = (json.loads(line) for line in stream.getvalue().splitlines())
    assert inside["series_instance_uid"] == "1.2.3" and inside["slices"] == 10
    assert inside["service"] == "svc" and inside["msg"] == "segmented"
    assert "series_instance_uid" not in outside


def test_identifying_fields_are_redacted_whatever_the_caller_passes() -> None:
    logger, stream = _capture()
    logger.info("received", extra={"PatientName": "DOE^JANE", "patient_id": "12345"})
    line = stream.getvalue()
    assert "DOE^JANE" not in line and "12345" not in line
    assert json.loads(line)["PatientName"] == "[redacted]"
