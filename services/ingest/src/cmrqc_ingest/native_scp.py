"""The fast DICOM node: a Storage SCP written directly on the Upper Layer protocol.

pynetdicom is a complete DICOM toolkit, and its generality has a price on this path: every
PDU goes through a state machine, event queues between a reader thread and the association
thread, and polling loops; on two cores a bare pynetdicom SCP with a do-nothing handler
moves 90-190 MR instances/s, where DCMTK's storescp moves over 1,000. A Storage SCP needs a
small part of the protocol — associate, receive C-STORE and C-ECHO, release or abort — and
this module implements exactly that part, one thread per association with blocking reads
into one buffer per PDU:

* A-ASSOCIATE-RQ: protocol version, application context, calling AE allow-list and the
  association limit are checked in that order and answered with A-ASSOCIATE-RJ (the same
  result / source / reason codes pynetdicom sends); presentation contexts are accepted for
  Verification and the storage SOP classes with our preferred transfer syntax among those proposed.
  Role selection, asynchronous operations, extended negotiation and user identity items are
  optional for an acceptor and are not answered (their defaults apply).
* P-DATA-TF: command and data set fragments are collected per message; the data set is
  never held beyond ``max_instance_bytes`` (what follows is drained and the request answered
  0xA701). A complete C-STORE becomes a Part 10 byte string (file meta written from the
  command and the negotiated transfer syntax) for :meth:`IngestPipeline.receive`, whose
  status is the answer; C-ECHO is answered 0x0000; other DIMSE requests 0x0211.
* A-RELEASE-RQ, A-ABORT, a closed connection and silence beyond ``network_timeout_s`` end
  the association; anything malformed or out of order is answered with A-ABORT naming the
  reason (PS3.8 Table 9-26). The pipeline is told how each session ended.
* TCP_NODELAY on every connection; optional (mutual) TLS on the accepted socket.

``CMRQC_INGEST_SCP_ENGINE=pynetdicom`` selects the pynetdicom node (:mod:`cmrqc_ingest.scp`)
instead; both answer through the same pipeline.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
import time
from typing import Protocol

from pydicom.uid import UID, EnhancedMRImageStorage, MRImageStorage, generate_uid
from pynetdicom import AllStoragePresentationContexts

from cmrqc_ingest import dul
from cmrqc_ingest.dul import (
    AbortReason,
    AcceptedContext,
    AssociateRequest,
    Command,
    ContextResult,
    PduType,
    ProtocolError,
    RejectReason,
    RejectResult,
    RejectSource,
)
from cmrqc_ingest.metrics import IngestMetrics
from cmrqc_ingest.pipeline import IngestPipeline
from cmrqc_ingest.scp import build_ssl_context
from cmrqc_ingest.settings import IngestSettings
from cmrqc_ingest.status import StoreStatus
from cmrqc_shared.events import IngestSource

logger = logging.getLogger(__name__)

VERIFICATION_SOP_CLASS = "1.2.840.10008.1.1"
IMPLEMENTATION_CLASS_UID = str(generate_uid(entropy_srcs=["cmrqc-stream", "ingest", "native-scp"]))
IMPLEMENTATION_VERSION_NAME = "CMRQC_INGEST_1"
UNRECOGNIZED_OPERATION = 0x0211

#: Largest PDU read from a peer whatever it proposes (a guard against absurd lengths).
_MAX_INCOMING_PDU = 64 * 1024 * 1024
#: Connections beyond this many times ``max_associations`` are closed on accept.
_CONNECTION_CAP_FACTOR = 2
#: How long a connection over the association limit may take to send its A-ASSOCIATE-RQ.
_REJECT_TIMEOUT_S = 5.0
#: How long, after A-RELEASE-RP, the requestor gets to close the connection (PS3.8 ARTIM).
_RELEASE_LINGER_S = 2.0


class _ConnectionClosed(Exception):
    """The peer closed the TCP connection."""


def supported_abstract_syntaxes(settings: IngestSettings) -> frozenset[str]:
    """Verification plus the storage SOP classes this node takes."""
    storage: list[str] = (
        [str(c.abstract_syntax) for c in AllStoragePresentationContexts if c.abstract_syntax]
        if settings.accept_all_storage
        else [str(MRImageStorage), str(EnhancedMRImageStorage)]
    )
    return frozenset([VERIFICATION_SOP_CLASS, *storage])


def negotiate_contexts(
    request: AssociateRequest, abstract_syntaxes: frozenset[str], transfer_syntaxes: tuple[str, ...]
) -> list[AcceptedContext]:
    """Accept each proposed context we support, with the transfer syntax we prefer (the first
    of ours, native before compressed, that the requestor proposed), as pynetdicom does."""
    answers = []
    for proposed in request.contexts:
        if proposed.abstract_syntax not in abstract_syntaxes:
            answers.append(
                AcceptedContext(
                    proposed.context_id,
                    ContextResult.ABSTRACT_SYNTAX_NOT_SUPPORTED,
                    "",
                    proposed.abstract_syntax,
                )
            )
            continue
        chosen = next((ts for ts in transfer_syntaxes if ts in proposed.transfer_syntaxes), "")
        result = (
            ContextResult.ACCEPTANCE if chosen else ContextResult.TRANSFER_SYNTAXES_NOT_SUPPORTED
        )
        answers.append(
            AcceptedContext(proposed.context_id, result, chosen, proposed.abstract_syntax)
        )
    return answers


class _Association:
    """One accepted TCP connection, from A-ASSOCIATE-RQ to its end (its own thread)."""

    def __init__(self, server: NativeStorageSCP, sock: socket.socket, over_limit: bool) -> None:
        self.server = server
        self.sock: socket.socket = sock
        self.over_limit = over_limit
        self.session = f"assoc-{id(self):x}"
        self.calling_ae = ""
        self.peer_max_pdu = 0
        self.contexts: dict[int, AcceptedContext] = {}
        self._header = bytearray(dul.PDU_HEADER.size)
        self._reset_message()

    def _reset_message(self) -> None:
        self.command_context = 0
        self.command_fragments: list[bytes] = []
        self.command: Command | None = None
        self.data_fragments: list[memoryview] = []
        self.data_size = 0
        self.oversize = False

    # -- socket I/O ------------------------------------------------------------------------

    def _recv_into(self, view: memoryview) -> None:
        received = 0
        while received < len(view):
            count = self.sock.recv_into(view[received:])
            if count == 0:
                raise _ConnectionClosed
            received += count

    def _read_pdu(self) -> tuple[int, bytearray]:
        self._recv_into(memoryview(self._header))
        pdu_type, length = dul.PDU_HEADER.unpack(self._header)
        if length > _MAX_INCOMING_PDU:
            raise ProtocolError(
                f"PDU of {length} bytes exceeds {_MAX_INCOMING_PDU}",
                AbortReason.INVALID_PDU_PARAMETER_VALUE,
            )
        body = bytearray(length)
        self._recv_into(memoryview(body))
        return pdu_type, body

    def _send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def abort(self, reason: AbortReason = AbortReason.NOT_SPECIFIED) -> None:
        """Send A-ABORT (best effort) and close the connection."""
        with contextlib.suppress(OSError):
            self._send(dul.encode_abort(reason))
        self._close()

    def _close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()

    # -- lifecycle -------------------------------------------------------------------------

    def run(self) -> None:
        metrics = self.server.metrics
        metrics.open_associations.inc()
        try:
            self._serve()
        except ProtocolError as error:
            logger.warning(
                "association aborted: protocol error",
                extra={"calling_ae": self.calling_ae, "error": str(error)},
            )
            self.abort(error.reason)
        except TimeoutError:
            logger.warning(
                "association aborted: silent too long",
                extra={
                    "calling_ae": self.calling_ae,
                    "timeout_s": self.server.settings.network_timeout_s,
                },
            )
            self.abort()
        except _ConnectionClosed:
            logger.info("connection closed by the peer", extra={"calling_ae": self.calling_ae})
        except (OSError, ssl.SSLError) as error:
            logger.info(
                "connection failed",
                extra={"calling_ae": self.calling_ae, "error": type(error).__name__},
            )
        except Exception:  # a bug of ours must not kill the node
            logger.exception("unexpected error in an association")
            self.abort()
        finally:
            self.server.pipeline.close_session(self.session, released=False)  # no-op after release
            self._close()
            metrics.open_associations.dec()
            self.server._forget(self)

    def _serve(self) -> None:
        settings = self.server.settings
        # a connection over the limit only needs to send its A-ASSOCIATE-RQ to be rejected
        timeout = settings.network_timeout_s
        self.sock.settimeout(min(timeout, _REJECT_TIMEOUT_S) if self.over_limit else timeout)
        if self.server.ssl_context is not None:
            self.sock = self.server.ssl_context.wrap_socket(self.sock, server_side=True)
        pdu_type, body = self._read_pdu()
        if pdu_type != PduType.ASSOCIATE_RQ:
            raise ProtocolError(
                f"PDU 0x{pdu_type:02X} before association", AbortReason.UNEXPECTED_PDU
            )
        request = dul.decode_associate_rq(bytes(body))
        self.calling_ae = request.calling_ae
        if not self._accept(request):
            return
        while True:
            pdu_type, body = self._read_pdu()
            if pdu_type == PduType.P_DATA_TF:
                self._on_p_data(body)
            elif pdu_type == PduType.RELEASE_RQ:
                self._send(dul.encode_release_rp())
                self.server.pipeline.close_session(self.session, released=True)
                self._linger()
                return
            elif pdu_type == PduType.ABORT:
                logger.info(
                    "association aborted by the peer", extra={"calling_ae": self.calling_ae}
                )
                return
            elif pdu_type in (
                PduType.ASSOCIATE_RQ,
                PduType.ASSOCIATE_AC,
                PduType.ASSOCIATE_RJ,
                PduType.RELEASE_RP,
            ):
                raise ProtocolError(f"unexpected PDU 0x{pdu_type:02X}", AbortReason.UNEXPECTED_PDU)
            else:
                raise ProtocolError(f"unknown PDU 0x{pdu_type:02X}", AbortReason.UNRECOGNIZED_PDU)

    def _linger(self) -> None:
        """After A-RELEASE-RP the requestor closes; wait briefly for it, then close anyway."""
        self.sock.settimeout(_RELEASE_LINGER_S)
        try:
            while self.sock.recv(4096):
                pass
        except OSError:
            pass

    def _reject(self, result: RejectResult, source: RejectSource, reason: int, why: str) -> bool:
        logger.info("association rejected", extra={"calling_ae": self.calling_ae, "reason": why})
        self._send(dul.encode_associate_rj(result, source, reason))
        return False

    def _accept(self, request: AssociateRequest) -> bool:
        settings = self.server.settings
        if self.over_limit:
            return self._reject(
                RejectResult.TRANSIENT,
                RejectSource.SERVICE_PROVIDER_PRESENTATION,
                RejectReason.LOCAL_LIMIT_EXCEEDED,
                "too many associations",
            )
        if not request.protocol_version & 1:
            return self._reject(
                RejectResult.PERMANENT,
                RejectSource.SERVICE_PROVIDER_ACSE,
                RejectReason.PROTOCOL_VERSION_NOT_SUPPORTED,
                "protocol version not supported",
            )
        if request.application_context != dul.APPLICATION_CONTEXT:
            return self._reject(
                RejectResult.PERMANENT,
                RejectSource.SERVICE_USER,
                RejectReason.APPLICATION_CONTEXT_NOT_SUPPORTED,
                "application context not supported",
            )
        allowed = settings.allowed_calling_aets
        if allowed and request.calling_ae not in allowed:
            return self._reject(
                RejectResult.PERMANENT,
                RejectSource.SERVICE_USER,
                RejectReason.CALLING_AE_NOT_RECOGNIZED,
                "calling AE title not allowed",
            )
        answers = negotiate_contexts(
            request, self.server.abstract_syntaxes, self.server.transfer_syntaxes
        )
        self.contexts = {a.context_id: a for a in answers if a.result == ContextResult.ACCEPTANCE}
        self.peer_max_pdu = request.max_pdu_length
        self._send(
            dul.encode_associate_ac(
                request,
                answers,
                max_pdu_length=settings.max_pdu_bytes,
                implementation_class_uid=IMPLEMENTATION_CLASS_UID,
                implementation_version_name=IMPLEMENTATION_VERSION_NAME,
            )
        )
        logger.debug(
            "association accepted",
            extra={"calling_ae": request.calling_ae, "contexts": len(self.contexts)},
        )
        return True

    # -- DIMSE -----------------------------------------------------------------------------

    def _on_p_data(self, body: bytearray) -> None:
        limit = self.server.pipeline.limits.max_instance_bytes
        for pdv in dul.decode_p_data(body):
            if pdv.context_id not in self.contexts:
                raise ProtocolError(
                    f"PDV on presentation context {pdv.context_id}, not accepted",
                    AbortReason.INVALID_PDU_PARAMETER_VALUE,
                )
            if pdv.is_command:
                if self.command is not None or (
                    self.command_fragments and pdv.context_id != self.command_context
                ):
                    raise ProtocolError(
                        "command fragment out of order", AbortReason.UNEXPECTED_PDU_PARAMETER
                    )
                self.command_context = pdv.context_id
                self.command_fragments.append(bytes(pdv.data))
                if pdv.is_last:
                    self.command = dul.decode_command(b"".join(self.command_fragments))
                    if not self.command.has_data_set:
                        self._dispatch()
                continue
            if self.command is None or pdv.context_id != self.command_context:
                raise ProtocolError(
                    "data set fragment without its command", AbortReason.UNEXPECTED_PDU_PARAMETER
                )
            self.data_size += len(pdv.data)
            if self.data_size > limit:
                self.oversize = True
                self.data_fragments.clear()
            elif not self.oversize:
                self.data_fragments.append(pdv.data)
            if pdv.is_last:
                self._dispatch()

    def _dispatch(self) -> None:
        command = self.command
        context = self.contexts[self.command_context]
        assert command is not None
        try:
            if command.command_field == dul.C_ECHO_RQ:
                self._respond(context, command, int(StoreStatus.SUCCESS))
            elif command.command_field == dul.C_STORE_RQ:
                self._store(context, command)
            else:
                self._respond(context, command, UNRECOGNIZED_OPERATION, "operation not supported")
        finally:
            self._reset_message()

    def _store(self, context: AcceptedContext, command: Command) -> None:
        pipeline = self.server.pipeline
        if not command.has_data_set:
            # 0xC000 cannot understand: a C-STORE-RQ must carry a data set
            self._respond(
                context, command, int(StoreStatus.CANNOT_UNDERSTAND), "request without a data set"
            )
            return
        if self.oversize:
            # 0xA701 refused, out of resources: over the configured size limit
            limit = pipeline.limits.max_instance_bytes
            status, comment = (
                StoreStatus.OUT_OF_RESOURCES_LIMIT,
                f"instance-too-large: over {limit} bytes",
            )
            pipeline.record_refusal(IngestSource.C_STORE, status, "instance-too-large", comment)
            self._respond(context, command, int(status), comment)
            return
        prefix = dul.part10_prefix(
            sop_class_uid=command.affected_sop_class_uid or context.abstract_syntax,
            sop_instance_uid=command.affected_sop_instance_uid,
            transfer_syntax_uid=context.transfer_syntax,
            implementation_class_uid=IMPLEMENTATION_CLASS_UID,
            implementation_version_name=IMPLEMENTATION_VERSION_NAME,
            source_ae=self.calling_ae,
        )
        result = pipeline.receive(
            b"".join([prefix, *self.data_fragments]),
            source=IngestSource.C_STORE,
            session=self.session,
            affected_sop_class_uid=command.affected_sop_class_uid or None,
            affected_sop_instance_uid=command.affected_sop_instance_uid or None,
        )
        comment = (
            "" if result.status == StoreStatus.SUCCESS else f"{result.reason}: {result.message}"
        )
        self._respond(context, command, int(result.status), comment)

    def _respond(
        self, context: AcceptedContext, command: Command, status: int, comment: str = ""
    ) -> None:
        encoded = dul.encode_response(command, status=status, error_comment=comment)
        self._send(dul.encode_command_p_data(context.context_id, encoded, self.peer_max_pdu))


class NativeStorageSCP:
    """The running node: start, stop accepting, drain, abort what is left.

    The same interface as :class:`cmrqc_ingest.scp.StorageSCP`.
    """

    def __init__(
        self, settings: IngestSettings, pipeline: IngestPipeline, metrics: IngestMetrics
    ) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.metrics = metrics
        self.ssl_context = build_ssl_context(settings)
        self.abstract_syntaxes = supported_abstract_syntaxes(settings)
        self.transfer_syntaxes = tuple(str(UID(ts)) for ts in pipeline.transfer_syntaxes)
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._associations: set[_Association] = set()
        self._lock = threading.Lock()

    @property
    def port(self) -> int:
        if self._listener is None:
            raise RuntimeError("the SCP is not started")
        return int(self._listener.getsockname()[1])

    @property
    def running(self) -> bool:
        return self._listener is not None

    def start(self) -> None:
        """Start listening (non-blocking; each association runs in its own thread)."""
        self._listener = socket.create_server(
            (self.settings.dicom_host, self.settings.dicom_port), backlog=128
        )
        self._acceptor = threading.Thread(
            target=self._accept_loop, args=(self._listener,), name="dicom-accept", daemon=True
        )
        self._acceptor.start()
        logger.info(
            "DICOM SCP listening",
            extra={
                "ae_title": self.settings.ae_title,
                "port": self.port,
                "tls": bool(self.ssl_context),
                "engine": "native",
            },
        )

    def _accept_loop(self, listener: socket.socket) -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except OSError:
                return  # the listener was closed by stop()
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                open_now = len(self._associations)
                over_limit = open_now >= self.settings.max_associations
                if open_now >= _CONNECTION_CAP_FACTOR * self.settings.max_associations:
                    sock.close()  # a flood: not even a thread to answer A-ASSOCIATE-RJ
                    logger.warning("connection refused: too many open connections")
                    continue
                association = _Association(self, sock, over_limit)
                self._associations.add(association)
            threading.Thread(target=association.run, name="dicom-assoc", daemon=True).start()

    def _forget(self, association: _Association) -> None:
        with self._lock:
            self._associations.discard(association)

    def active_associations(self) -> int:
        with self._lock:
            return len(self._associations)

    def stop(self, grace_s: float = 10.0) -> None:
        """Stop accepting, let open associations finish for ``grace_s``, abort the rest."""
        with self._lock:
            listener, self._listener = self._listener, None
        if listener is None:
            return
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)  # wakes accept()
        listener.close()
        if self._acceptor is not None:
            self._acceptor.join(timeout=5)
        deadline = time.monotonic() + grace_s
        while self.active_associations() and time.monotonic() < deadline:
            time.sleep(0.05)
        with self._lock:
            remaining = list(self._associations)
        for association in remaining:
            logger.warning("aborting an association still open at shutdown")
            association.abort()
        logger.info("DICOM SCP stopped")


class DicomNode(Protocol):
    """What the service needs of a DICOM node (either engine)."""

    @property
    def port(self) -> int: ...

    @property
    def running(self) -> bool: ...

    def start(self) -> None: ...

    def active_associations(self) -> int: ...

    def stop(self, grace_s: float = 10.0) -> None: ...


def make_scp(
    settings: IngestSettings, pipeline: IngestPipeline, metrics: IngestMetrics
) -> DicomNode:
    """The node the settings select (``scp_engine``)."""
    if settings.scp_engine == "pynetdicom":
        from cmrqc_ingest.scp import StorageSCP

        return StorageSCP(settings, pipeline, metrics)
    return NativeStorageSCP(settings, pipeline, metrics)
