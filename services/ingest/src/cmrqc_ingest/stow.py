"""DICOMweb STOW-RS (PS3.18 10.5): ``POST /dicomweb/studies[/{StudyInstanceUID}]``.

The request body is ``multipart/related; type="application/dicom"``, one Part 10 instance
per part. Each instance goes through :meth:`IngestPipeline.receive`, exactly like a C-STORE;
one request is one session (its series may complete when the request ends). The response is
an ``application/dicom+json`` data set with ReferencedSOPSequence (0008,1199) for stored
instances and FailedSOPSequence (0008,1198) with FailureReason (0008,1197) for the others.
No Retrieve URL is given (this server has no WADO-RS).

HTTP status, per PS3.18 Table 10.5.3-1: 200 every instance stored; 202 some stored, some
failed; 409 none stored; 400 malformed multipart or no part; 413 body over
``stow_max_request_bytes``; 415 not ``multipart/related`` of ``application/dicom``;
406 an Accept header that excludes ``application/dicom+json``; 503 (with Retry-After) when the
spool is above its watermark before the request is read.
"""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from cmrqc_ingest.pipeline import IngestPipeline, ReceiveResult
from cmrqc_ingest.status import StoreStatus
from cmrqc_shared.events import IngestSource

logger = logging.getLogger(__name__)

DICOM_JSON = "application/dicom+json"
_ACCEPTABLE = ("application/dicom+json", "application/json", "application/*", "*/*")


class MultipartError(ValueError):
    """The body is not a well-formed multipart/related message."""


@dataclass(frozen=True)
class Part:
    """One body part: its Content-Type (lower case, no parameters) and bytes."""

    content_type: str
    data: bytes


def _content_type_params(value: str) -> tuple[str, dict[str, str]]:
    """Split a Content-Type header into (media type, parameters)."""
    items = [p.strip() for p in re.split(r';(?=(?:[^"]*"[^"]*")*[^"]*$)', value)]
    media = items[0].lower()
    params: dict[str, str] = {}
    for item in items[1:]:
        if "=" in item:
            key, _, val = item.partition("=")
            params[key.strip().lower()] = val.strip().strip('"')
    return media, params


def parse_multipart_related(body: bytes, boundary: str) -> list[Part]:
    """Split a multipart body (RFC 2046) into its parts.

    Raises:
        MultipartError: no opening delimiter, a part without a header block, or no close.
    """
    if not boundary:
        raise MultipartError("multipart Content-Type without a boundary")
    delimiter = b"--" + boundary.encode("latin-1")
    # Prefix CRLF so the first delimiter looks like the others ("\r\n--boundary").
    chunks = (b"\r\n" + body).split(b"\r\n" + delimiter)
    if len(chunks) < 2:
        raise MultipartError("no multipart delimiter in the body")
    parts: list[Part] = []
    closed = False
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):
            closed = True
            break
        line_end = chunk.find(b"\r\n")
        if line_end < 0:
            raise MultipartError("a delimiter line is not terminated")
        rest = chunk[line_end + 2 :]
        header_end = rest.find(b"\r\n\r\n")
        if rest.startswith(b"\r\n"):
            headers_text, content = b"", rest[2:]
        elif header_end >= 0:
            headers_text, content = rest[:header_end], rest[header_end + 4 :]
        else:
            raise MultipartError("a part has no header block")
        content_type = "application/octet-stream"
        for line in headers_text.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-type":
                content_type = _content_type_params(value)[0]
        parts.append(Part(content_type=content_type, data=content))
    if not closed:
        raise MultipartError("the multipart body has no close delimiter")
    return parts


def _sop_item(result: ReceiveResult) -> dict[str, Any]:
    item: dict[str, Any] = {}
    if result.sop_class_uid:
        item["00081150"] = {"vr": "UI", "Value": [result.sop_class_uid]}
    if result.sop_instance_uid:
        item["00081155"] = {"vr": "UI", "Value": [result.sop_instance_uid]}
    return item


def stow_response_body(results: list[ReceiveResult]) -> dict[str, Any]:
    """The STOW-RS response data set in the DICOM JSON model (PS3.18 F.2)."""
    body: dict[str, Any] = {}
    stored = [r for r in results if r.status == StoreStatus.SUCCESS]
    failed = [r for r in results if r.status != StoreStatus.SUCCESS]
    if stored:
        body["00081199"] = {"vr": "SQ", "Value": [_sop_item(r) for r in stored]}
    if failed:
        body["00081198"] = {
            "vr": "SQ",
            "Value": [
                {**_sop_item(r), "00081197": {"vr": "US", "Value": [int(r.status)]}} for r in failed
            ],
        }
    return body


def stow_http_status(results: list[ReceiveResult]) -> int:
    """200 all stored, 202 some, 409 none (PS3.18 Table 10.5.3-1)."""
    stored = sum(r.status == StoreStatus.SUCCESS for r in results)
    if stored == len(results):
        return 200
    return 202 if stored else 409


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(message + "\n", status_code=status, media_type="text/plain", headers=headers)


def build_stow_app(pipeline: IngestPipeline, *, max_request_bytes: int) -> Starlette:
    """The Starlette application serving STOW-RS for ``pipeline``."""

    async def store(request: Request) -> Response:
        accept = request.headers.get("accept", "")
        if accept and not any(a in accept.lower() for a in _ACCEPTABLE):
            return _error(406, f"responses are {DICOM_JSON}")
        media, params = _content_type_params(request.headers.get("content-type", ""))
        part_type = params.get("type", "application/dicom").lower()
        if media != "multipart/related" or part_type != "application/dicom":
            return _error(415, 'expected multipart/related; type="application/dicom"')
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_request_bytes:
            return _error(413, f"request body over {max_request_bytes} bytes")
        if not pipeline.spool.below_watermark():
            return _error(503, "spool above its watermark", {"Retry-After": "30"})
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_request_bytes:
                return _error(413, f"request body over {max_request_bytes} bytes")
            chunks.append(chunk)
        try:
            parts = parse_multipart_related(b"".join(chunks), params.get("boundary", ""))
        except MultipartError as error:
            return _error(400, str(error))
        if not parts:
            return _error(400, "no instance in the request")
        study_uid = request.path_params.get("study")
        results = await run_in_threadpool(_receive_all, pipeline, parts, study_uid)
        status = stow_http_status(results)
        logger.info(
            "STOW-RS request",
            extra={"instances": len(results), "status": status},
        )
        return JSONResponse(stow_response_body(results), status_code=status, media_type=DICOM_JSON)

    return Starlette(
        routes=[
            Route("/dicomweb/studies", store, methods=["POST"]),
            Route("/dicomweb/studies/{study}", store, methods=["POST"]),
        ]
    )


def _receive_all(
    pipeline: IngestPipeline, parts: list[Part], study_uid: str | None
) -> list[ReceiveResult]:
    session = f"stow-{uuid.uuid4().hex}"
    results = []
    try:
        for part in parts:
            if part.content_type != "application/dicom":
                # 0xC000 cannot understand: only application/dicom parts are accepted
                results.append(
                    ReceiveResult(StoreStatus.CANNOT_UNDERSTAND, "unsupported-part-type")
                )
                continue
            results.append(
                pipeline.receive(
                    part.data,
                    source=IngestSource.STOW_RS,
                    session=session,
                    study_instance_uid=study_uid,
                )
            )
    finally:
        pipeline.close_session(session, released=True)
    return results


class StowServer:
    """uvicorn serving the STOW-RS app in a background thread, on a pre-bound socket."""

    def __init__(self, app: Starlette, host: str, port: int) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        self._socket.listen(128)
        self._socket.set_inheritable(True)
        config = uvicorn.Config(
            app,
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=10,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, name="stow-rs", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._socket.getsockname()[1])

    def start(self, timeout_s: float = 10.0) -> None:
        """Start serving; returns once uvicorn accepts connections.

        Raises:
            RuntimeError: uvicorn did not start within ``timeout_s``.
        """
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the STOW-RS server did not start")
            time.sleep(0.01)
        logger.info("STOW-RS listening", extra={"port": self.port})

    def stop(self, timeout_s: float = 15.0) -> None:
        """Finish requests in flight (up to uvicorn's graceful timeout), then stop."""
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        self._socket.close()
