"""Sending studies to a DICOM node or a STOW-RS endpoint (simulator, benchmark, tests).

These are the client side of what the service serves: :func:`send_cstore` pushes Part 10
files over one association (pynetdicom SCU, TCP_NODELAY set, every file's own transfer
syntax proposed), :func:`post_stow` posts them as one ``multipart/related`` request.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.presentation import build_context

from cmrqc_shared.dicom_scu import guard_response_race, set_tcp_nodelay


class AssociationRefused(Exception):
    """The peer rejected or aborted the association."""


def send_cstore(
    host: str,
    port: int,
    files: Sequence[Path | bytes | Dataset],
    *,
    called_ae: str = "CMRQC",
    calling_ae: str = "CMRQC-SCU",
    ssl_context: ssl.SSLContext | None = None,
    max_pdu: int = 131072,
) -> list[int | None]:
    """C-STORE ``files`` over one association; return each response status.

    A status is None when no response came (the association broke). Each file's SOP class
    is proposed with its own transfer syntax (as stored), so compressed files travel
    compressed.

    Raises:
        AssociationRefused: the association was rejected or aborted during negotiation.
    """
    datasets = [_as_dataset(f) for f in files]
    contexts: dict[tuple[str, str], None] = {}
    for ds in datasets:
        contexts[(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID))] = None
    ae = AE(ae_title=calling_ae)
    ae.maximum_pdu_size = max_pdu
    ae.requested_contexts = [build_context(c, [t]) for c, t in list(contexts)[:128]]
    tls_args = (ssl_context, host) if ssl_context is not None else None
    assoc = ae.associate(
        host,
        port,
        ae_title=called_ae,
        max_pdu=max_pdu,
        evt_handlers=[(evt.EVT_CONN_OPEN, set_tcp_nodelay)],
        tls_args=tls_args,
    )
    guard_response_race(assoc)
    if not assoc.is_established:
        raise AssociationRefused(f"association to {called_ae}@{host}:{port} not established")
    statuses: list[int | None] = []
    try:
        for ds in datasets:
            response = assoc.send_c_store(ds)
            statuses.append(int(response.Status) if "Status" in response else None)
            if not assoc.is_established:
                break
    finally:
        if assoc.is_established:
            assoc.release()
    statuses.extend([None] * (len(datasets) - len(statuses)))
    return statuses


def _as_dataset(item: Path | bytes | Dataset) -> Dataset:
    if isinstance(item, Dataset):
        return item
    if isinstance(item, bytes):
        import io

        return dcmread(io.BytesIO(item))
    return dcmread(item)


def multipart_related(
    parts: Sequence[bytes], content_type: str = "application/dicom"
) -> tuple[bytes, str]:
    """A ``multipart/related`` body of ``parts`` and its Content-Type header value."""
    boundary = f"cmrqc-{uuid.uuid4().hex}"
    chunks = []
    for part in parts:
        chunks.append(f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode())
        chunks.append(part)
        chunks.append(b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    header = f'multipart/related; type="{content_type}"; boundary={boundary}'
    return b"".join(chunks), header


@dataclass(frozen=True)
class StowResponse:
    """HTTP status and parsed DICOM JSON body of a STOW-RS request."""

    status: int
    body: dict[str, Any]

    def failure_reasons(self) -> list[int]:
        """FailureReason of every FailedSOPSequence item."""
        items = self.body.get("00081198", {}).get("Value", [])
        return [int(i["00081197"]["Value"][0]) for i in items]

    def stored_sop_instance_uids(self) -> list[str]:
        items = self.body.get("00081199", {}).get("Value", [])
        return [str(i["00081155"]["Value"][0]) for i in items if "00081155" in i]


def post_stow(
    url: str,
    parts: Sequence[Path | bytes],
    *,
    content_type: str = "application/dicom",
    timeout_s: float = 60.0,
    headers: dict[str, str] | None = None,
) -> StowResponse:
    """POST ``parts`` (Part 10 files) to a STOW-RS URL (…/dicomweb/studies[/uid])."""
    payloads = [p if isinstance(p, bytes) else Path(p).read_bytes() for p in parts]
    body, header = multipart_related(payloads, content_type)
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={"Content-Type": header, "Accept": "application/dicom+json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return StowResponse(response.status, json.loads(response.read() or b"{}"))
    except urllib.error.HTTPError as error:
        raw = error.read()
        try:
            parsed = json.loads(raw) if raw else {}
        except ValueError:
            parsed = {"text": raw.decode("latin-1")}
        return StowResponse(error.code, parsed if isinstance(parsed, dict) else {})
