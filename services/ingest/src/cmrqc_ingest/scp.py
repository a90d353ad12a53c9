"""The DICOM node: a pynetdicom Storage SCP (C-ECHO, C-STORE), optionally over TLS.

Handlers are small module-level functions bound declaratively (:func:`event_handlers`).
None of them raises into pynetdicom: the C-STORE handler hands the raw encoded data set
to :meth:`IngestPipeline.receive` (which never raises and returns the status naming the
failed check) and answers with that status plus an ErrorComment. Pixel data is not decoded
here; the handler writes the bytes to the spool and parses headers only.

Performance: TCP_NODELAY is set on every accepted socket (on loopback DICOM's small
request/response exchanges otherwise wait for delayed ACKs), and pynetdicom's standard
per-PDU logging handlers are switched off.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import UID, EnhancedMRImageStorage, MRImageStorage
from pynetdicom import AE, AllStoragePresentationContexts, _config, evt

from cmrqc_ingest.metrics import IngestMetrics
from cmrqc_ingest.pipeline import IngestPipeline
from cmrqc_ingest.settings import IngestSettings
from cmrqc_ingest.status import StoreStatus
from cmrqc_shared.events import IngestSource

logger = logging.getLogger(__name__)

VERIFICATION_SOP_CLASS = UID("1.2.840.10008.1.1")


def session_id(assoc: Any) -> str:
    """The tracker session of an association (stable for its lifetime)."""
    return f"assoc-{id(assoc):x}"


def handle_echo(event: evt.Event) -> int:
    """C-ECHO: always 0x0000 Success (the node is up)."""
    return int(StoreStatus.SUCCESS)


def handle_store(event: evt.Event, pipeline: IngestPipeline) -> Dataset:
    """C-STORE: spool the encoded data set; answer with the pipeline's status."""
    status = Dataset()
    try:
        data = event.encoded_dataset(include_meta=True)
        request: Any = event.request
        sop_class = str(request.AffectedSOPClassUID or "")
        sop_instance = str(request.AffectedSOPInstanceUID or "")
    except Exception as error:  # no data set, or a request pynetdicom could not decode
        logger.warning("C-STORE request unreadable", extra={"error": type(error).__name__})
        # 0xC000 cannot understand: the request carries no usable data set
        status.Status = int(StoreStatus.CANNOT_UNDERSTAND)
        status.ErrorComment = "request without a readable data set"
        return status
    result = pipeline.receive(
        data,
        source=IngestSource.C_STORE,
        session=session_id(event.assoc),
        affected_sop_class_uid=sop_class or None,
        affected_sop_instance_uid=sop_instance or None,
    )
    status.Status = int(result.status)
    if result.status != StoreStatus.SUCCESS:
        status.ErrorComment = f"{result.reason}: {result.message}"[:64]
    return status


def handle_connection_open(event: evt.Event, metrics: IngestMetrics) -> None:
    """Set TCP_NODELAY on the accepted socket (see the module docstring)."""
    metrics.open_associations.inc()
    try:
        assoc_socket: Any = event.assoc.dul.socket
        sock = assoc_socket.socket if assoc_socket is not None else None
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (AttributeError, OSError) as error:
        logger.debug("could not set TCP_NODELAY", extra={"error": type(error).__name__})


def handle_released(event: evt.Event, pipeline: IngestPipeline) -> None:
    """A-RELEASE: the sender says it is done; its series may be complete."""
    pipeline.close_session(session_id(event.assoc), released=True)


def handle_aborted(event: evt.Event, pipeline: IngestPipeline) -> None:
    """A-ABORT: the sender may retry; its series wait for the quiet time."""
    pipeline.close_session(session_id(event.assoc), released=False)


def handle_connection_close(
    event: evt.Event, pipeline: IngestPipeline, metrics: IngestMetrics
) -> None:
    """Connection gone (after a release, an abort or a network failure)."""
    metrics.open_associations.dec()
    pipeline.close_session(session_id(event.assoc), released=False)  # no-op after release


def event_handlers(pipeline: IngestPipeline, metrics: IngestMetrics) -> list[Any]:
    """The SCP's handlers, bound declaratively."""
    return [
        (evt.EVT_C_ECHO, handle_echo, []),
        (evt.EVT_C_STORE, handle_store, [pipeline]),
        (evt.EVT_CONN_OPEN, handle_connection_open, [metrics]),
        (evt.EVT_RELEASED, handle_released, [pipeline]),
        (evt.EVT_ABORTED, handle_aborted, [pipeline]),
        (evt.EVT_CONN_CLOSE, handle_connection_close, [pipeline, metrics]),
    ]


def build_ssl_context(settings: IngestSettings) -> ssl.SSLContext | None:
    """The server-side TLS context, or None when TLS is not configured.

    With ``tls_ca_file`` the peer must present a certificate signed by that CA (mutual TLS,
    as DICOM's Basic TLS Secure Transport Connection Profile recommends).

    Raises:
        OSError, ssl.SSLError: a file is missing or invalid.
    """
    if not settings.tls_enabled():
        return None
    context = ssl.create_default_context(
        ssl.Purpose.CLIENT_AUTH,
        cafile=str(settings.tls_ca_file) if settings.tls_ca_file else None,
    )
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(settings.tls_cert_file), str(settings.tls_key_file))
    context.verify_mode = ssl.CERT_REQUIRED if settings.tls_ca_file else ssl.CERT_NONE
    return context


def build_ae(settings: IngestSettings, transfer_syntaxes: tuple[str, ...]) -> AE:
    """An AE with our title, limits, calling-AE allow-list and presentation contexts."""
    _config.LOG_HANDLER_LEVEL = "none"  # per-PDU debug handlers cost CPU on every message
    ae = AE(ae_title=settings.ae_title)
    ae.maximum_associations = settings.max_associations
    ae.maximum_pdu_size = settings.max_pdu_bytes
    ae.network_timeout = settings.network_timeout_s
    ae.require_calling_aet = list(settings.allowed_calling_aets)
    ae.add_supported_context(VERIFICATION_SOP_CLASS)
    if settings.accept_all_storage:
        for context in AllStoragePresentationContexts:
            if context.abstract_syntax is not None:
                ae.add_supported_context(context.abstract_syntax, list(transfer_syntaxes))
    else:
        for sop_class in (MRImageStorage, EnhancedMRImageStorage):
            ae.add_supported_context(sop_class, list(transfer_syntaxes))
    return ae


class StorageSCP:
    """The running SCP: start, stop accepting, drain, abort what is left."""

    def __init__(
        self, settings: IngestSettings, pipeline: IngestPipeline, metrics: IngestMetrics
    ) -> None:
        self.settings = settings
        self.ae = build_ae(settings, pipeline.transfer_syntaxes)
        self._handlers = event_handlers(pipeline, metrics)
        self._ssl = build_ssl_context(settings)
        self._server: Any = None
        self._lock = threading.Lock()

    @property
    def port(self) -> int:
        """The bound port (useful when 0 was configured)."""
        if self._server is None:
            raise RuntimeError("the SCP is not started")
        return int(self._server.server_address[1])

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> None:
        """Start listening (non-blocking; associations run in their own threads)."""
        self._server = self.ae.start_server(
            (self.settings.dicom_host, self.settings.dicom_port),
            block=False,
            evt_handlers=self._handlers,
            ssl_context=self._ssl,
        )
        logger.info(
            "DICOM SCP listening",
            extra={"ae_title": self.settings.ae_title, "port": self.port, "tls": bool(self._ssl)},
        )

    def active_associations(self) -> int:
        server = self._server
        return len(server.active_associations) if server is not None else 0

    def stop(self, grace_s: float = 10.0) -> None:
        """Stop accepting, let open associations finish for ``grace_s``, abort the rest."""
        with self._lock:
            server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()  # closes the listening socket; running associations go on
        deadline = time.monotonic() + grace_s
        while server.active_associations and time.monotonic() < deadline:
            time.sleep(0.05)
        for assoc in server.active_associations:
            logger.warning("aborting an association still open at shutdown")
            assoc.abort()
        logger.info("DICOM SCP stopped")
