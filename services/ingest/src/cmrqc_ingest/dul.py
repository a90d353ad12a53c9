"""The DICOM Upper Layer wire format (PS3.8 Section 9) and DIMSE command sets (PS3.7 Section 9,
Annex E) that a Storage SCP needs: decode A-ASSOCIATE-RQ and P-DATA-TF, encode the answers.

Pure functions over bytes, no sockets; :mod:`cmrqc_ingest.native_scp` drives them. Every
decoder raises :class:`ProtocolError` (with the A-ABORT reason to send) on malformed input and
never anything else, so the connection handler has one failure path.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntEnum

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"

#: PDU header: type (1), reserved (1), length (4, big-endian).
PDU_HEADER = struct.Struct(">BxI")
_ITEM_HEADER = struct.Struct(">BxH")
_PDV_HEADER = struct.Struct(">IBB")
_ELEMENT_HEADER = struct.Struct("<HHI")


class PduType(IntEnum):
    ASSOCIATE_RQ = 0x01
    ASSOCIATE_AC = 0x02
    ASSOCIATE_RJ = 0x03
    P_DATA_TF = 0x04
    RELEASE_RQ = 0x05
    RELEASE_RP = 0x06
    ABORT = 0x07


class AbortReason(IntEnum):
    """A-ABORT reasons of the service provider (PS3.8 Table 9-26, source 2)."""

    NOT_SPECIFIED = 0
    UNRECOGNIZED_PDU = 1
    UNEXPECTED_PDU = 2
    UNRECOGNIZED_PDU_PARAMETER = 4
    UNEXPECTED_PDU_PARAMETER = 5
    INVALID_PDU_PARAMETER_VALUE = 6


class RejectResult(IntEnum):
    PERMANENT = 1
    TRANSIENT = 2


class RejectSource(IntEnum):
    SERVICE_USER = 1
    SERVICE_PROVIDER_ACSE = 2
    SERVICE_PROVIDER_PRESENTATION = 3


class RejectReason(IntEnum):
    """A-ASSOCIATE-RJ reasons (PS3.8 Table 9-21); the meaning depends on the source."""

    NO_REASON = 1
    # source 1 (service user)
    APPLICATION_CONTEXT_NOT_SUPPORTED = 2
    CALLING_AE_NOT_RECOGNIZED = 3
    CALLED_AE_NOT_RECOGNIZED = 7
    # source 2 (ACSE): 2 = protocol version not supported
    PROTOCOL_VERSION_NOT_SUPPORTED = 2
    # source 3 (presentation): 2 = local limit exceeded
    LOCAL_LIMIT_EXCEEDED = 2


class ContextResult(IntEnum):
    """Presentation context results (PS3.8 Table 9-18)."""

    ACCEPTANCE = 0
    USER_REJECTION = 1
    NO_REASON = 2
    ABSTRACT_SYNTAX_NOT_SUPPORTED = 3
    TRANSFER_SYNTAXES_NOT_SUPPORTED = 4


class ProtocolError(Exception):
    """Malformed or unexpected PDU content; the association is aborted with ``reason``."""

    def __init__(self, message: str, reason: AbortReason) -> None:
        super().__init__(message)
        self.reason = reason


def _uid(raw: bytes) -> str:
    return raw.rstrip(b"\0 ").decode("ascii", errors="replace")


def _ae(raw: bytes) -> str:
    return raw.decode("ascii", errors="replace").strip()


@dataclass
class ProposedContext:
    context_id: int
    abstract_syntax: str
    transfer_syntaxes: list[str]


@dataclass
class AssociateRequest:
    protocol_version: int
    called_ae: str
    calling_ae: str
    called_ae_raw: bytes
    calling_ae_raw: bytes
    application_context: str
    contexts: list[ProposedContext] = field(default_factory=list)
    max_pdu_length: int = 0
    implementation_class_uid: str = ""
    implementation_version_name: str = ""


def _items(body: memoryview, what: str) -> list[tuple[int, memoryview]]:
    items: list[tuple[int, memoryview]] = []
    offset = 0
    while offset < len(body):
        if offset + 4 > len(body):
            raise ProtocolError(
                f"truncated item in {what}", AbortReason.INVALID_PDU_PARAMETER_VALUE
            )
        item_type, length = _ITEM_HEADER.unpack_from(body, offset)
        end = offset + 4 + length
        if end > len(body):
            raise ProtocolError(
                f"item 0x{item_type:02X} overruns {what}", AbortReason.INVALID_PDU_PARAMETER_VALUE
            )
        items.append((item_type, body[offset + 4 : end]))
        offset = end
    return items


def decode_associate_rq(body: bytes) -> AssociateRequest:
    """The A-ASSOCIATE-RQ PDU's fields (``body``: everything after the 6-byte PDU header)."""
    view = memoryview(body)
    if len(view) < 68:
        raise ProtocolError(
            "A-ASSOCIATE-RQ shorter than 68 bytes", AbortReason.INVALID_PDU_PARAMETER_VALUE
        )
    (version,) = struct.unpack_from(">H", view, 0)
    called_raw, calling_raw = bytes(view[4:20]), bytes(view[20:36])
    request = AssociateRequest(
        protocol_version=version,
        called_ae=_ae(called_raw),
        calling_ae=_ae(calling_raw),
        called_ae_raw=called_raw,
        calling_ae_raw=calling_raw,
        application_context="",
    )
    for item_type, item in _items(view[68:], "A-ASSOCIATE-RQ"):
        if item_type == 0x10:
            request.application_context = _uid(bytes(item))
        elif item_type == 0x20:
            request.contexts.append(_decode_proposed_context(item))
        elif item_type == 0x50:
            _decode_user_information(item, request)
        # other item types are not defined for this PDU; they are ignored (PS3.8 9.3.1)
    return request


def _decode_proposed_context(item: memoryview) -> ProposedContext:
    if len(item) < 4:
        raise ProtocolError(
            "presentation context item too short", AbortReason.INVALID_PDU_PARAMETER_VALUE
        )
    context = ProposedContext(context_id=item[0], abstract_syntax="", transfer_syntaxes=[])
    for sub_type, sub in _items(item[4:], "presentation context"):
        if sub_type == 0x30:
            context.abstract_syntax = _uid(bytes(sub))
        elif sub_type == 0x40:
            context.transfer_syntaxes.append(_uid(bytes(sub)))
    return context


def _decode_user_information(item: memoryview, request: AssociateRequest) -> None:
    for sub_type, sub in _items(item, "user information"):
        if sub_type == 0x51:
            if len(sub) != 4:
                raise ProtocolError(
                    "maximum length sub-item is not 4 bytes",
                    AbortReason.INVALID_PDU_PARAMETER_VALUE,
                )
            (request.max_pdu_length,) = struct.unpack(">I", sub)
        elif sub_type == 0x52:
            request.implementation_class_uid = _uid(bytes(sub))
        elif sub_type == 0x55:
            request.implementation_version_name = _ae(bytes(sub))
        # 0x53 asynchronous operations window, 0x54 role selection, 0x56/0x57 extended
        # negotiation, 0x58 user identity: optional; not answering them means the defaults
        # (one operation at a time, the requestor as SCU, no extended services) apply.


@dataclass
class AcceptedContext:
    context_id: int
    result: ContextResult
    transfer_syntax: str
    abstract_syntax: str


def _item(item_type: int, value: bytes) -> bytes:
    return _ITEM_HEADER.pack(item_type, len(value)) + value


def _pdu(pdu_type: int, body: bytes) -> bytes:
    return PDU_HEADER.pack(pdu_type, len(body)) + body


def _uid_bytes(uid: str) -> bytes:
    raw = uid.encode("ascii")
    return raw + b"\0" if len(raw) % 2 else raw


def encode_associate_ac(
    request: AssociateRequest,
    contexts: list[AcceptedContext],
    *,
    max_pdu_length: int,
    implementation_class_uid: str,
    implementation_version_name: str,
) -> bytes:
    """A-ASSOCIATE-AC answering ``request`` with ``contexts`` (PS3.8 9.3.3)."""
    parts = [
        struct.pack(">HH", 1, 0),
        request.called_ae_raw,
        request.calling_ae_raw,
        bytes(32),
        _item(0x10, APPLICATION_CONTEXT.encode("ascii")),
    ]
    for context in contexts:
        # the transfer syntax sub-item is present but not significant when rejected
        syntax = (
            _item(0x40, context.transfer_syntax.encode("ascii"))
            if context.transfer_syntax
            else _item(0x40, b"")
        )
        parts.append(_item(0x21, bytes([context.context_id, 0, int(context.result), 0]) + syntax))
    user = (
        _item(0x51, struct.pack(">I", max_pdu_length))
        + _item(0x52, implementation_class_uid.encode("ascii"))
        + _item(0x55, implementation_version_name.encode("ascii"))
    )
    parts.append(_item(0x50, user))
    return _pdu(PduType.ASSOCIATE_AC, b"".join(parts))


def encode_associate_rj(result: RejectResult, source: RejectSource, reason: int) -> bytes:
    return _pdu(PduType.ASSOCIATE_RJ, bytes([0, int(result), int(source), reason]))


def encode_release_rp() -> bytes:
    return _pdu(PduType.RELEASE_RP, bytes(4))


def encode_abort(reason: AbortReason, *, source: int = 2) -> bytes:
    """A-ABORT from the service provider (source 2) or the service user (source 0)."""
    return _pdu(PduType.ABORT, bytes([0, 0, source, int(reason) if source == 2 else 0]))


@dataclass
class Pdv:
    context_id: int
    is_command: bool
    is_last: bool
    data: memoryview


def decode_p_data(body: bytes | bytearray) -> list[Pdv]:
    """The presentation data values of one P-DATA-TF PDU body (PS3.8 9.3.5, Annex E)."""
    view = memoryview(body)
    pdvs: list[Pdv] = []
    offset = 0
    while offset < len(view):
        if offset + 6 > len(view):
            raise ProtocolError("truncated PDV item", AbortReason.INVALID_PDU_PARAMETER_VALUE)
        length, context_id, header = _PDV_HEADER.unpack_from(view, offset)
        end = offset + 4 + length
        if length < 2 or end > len(view):
            raise ProtocolError(
                "PDV item length out of range", AbortReason.INVALID_PDU_PARAMETER_VALUE
            )
        pdvs.append(Pdv(context_id, bool(header & 1), bool(header & 2), view[offset + 6 : end]))
        offset = end
    if not pdvs:
        raise ProtocolError("P-DATA-TF without a PDV", AbortReason.INVALID_PDU_PARAMETER_VALUE)
    return pdvs


# -- DIMSE command sets (group 0000, always Implicit VR Little Endian) --------------------

C_STORE_RQ = 0x0001
C_ECHO_RQ = 0x0030
NO_DATA_SET = 0x0101
_RESPONSE_BIT = 0x8000

_US_TAGS = {0x0100, 0x0110, 0x0120, 0x0700, 0x0800, 0x0900}
_COMMAND_NAMES = {
    0x0002: "affected_sop_class_uid",
    0x1000: "affected_sop_instance_uid",
}


@dataclass
class Command:
    """The fields of a DIMSE request this node reads."""

    command_field: int
    message_id: int
    has_data_set: bool
    affected_sop_class_uid: str = ""
    affected_sop_instance_uid: str = ""


def decode_command(data: bytes) -> Command:
    """A DIMSE request's command set.

    Raises:
        ProtocolError: malformed encoding, or CommandField / MessageID missing.
    """
    view = memoryview(data)
    values: dict[int, int] = {}
    uids: dict[str, str] = {}
    offset = 0
    while offset < len(view):
        if offset + 8 > len(view):
            raise ProtocolError(
                "truncated command element", AbortReason.INVALID_PDU_PARAMETER_VALUE
            )
        group, element, length = _ELEMENT_HEADER.unpack_from(view, offset)
        offset += 8
        if group != 0x0000 or offset + length > len(view):
            raise ProtocolError("malformed command set", AbortReason.INVALID_PDU_PARAMETER_VALUE)
        value = view[offset : offset + length]
        offset += length
        if element in _US_TAGS:
            if length != 2:
                raise ProtocolError(
                    f"command element (0000,{element:04X}) is not US",
                    AbortReason.INVALID_PDU_PARAMETER_VALUE,
                )
            values[element] = struct.unpack("<H", value)[0]
        elif element in _COMMAND_NAMES:
            uids[_COMMAND_NAMES[element]] = _uid(bytes(value))
    if 0x0100 not in values or 0x0110 not in values:
        raise ProtocolError(
            "command set without CommandField or MessageID", AbortReason.INVALID_PDU_PARAMETER_VALUE
        )
    return Command(
        command_field=values[0x0100],
        message_id=values[0x0110],
        has_data_set=values.get(0x0800, NO_DATA_SET) != NO_DATA_SET,
        **uids,
    )


def _element(element: int, value: bytes) -> bytes:
    return _ELEMENT_HEADER.pack(0x0000, element, len(value)) + value


def _us(value: int) -> bytes:
    return struct.pack("<H", value)


def encode_response(
    request: Command,
    *,
    status: int,
    error_comment: str = "",
) -> bytes:
    """The response command set (C-STORE-RSP, C-ECHO-RSP, ...) to ``request``."""
    elements = []
    if request.affected_sop_class_uid:
        elements.append(_element(0x0002, _uid_bytes(request.affected_sop_class_uid)))
    elements += [
        _element(0x0100, _us(request.command_field | _RESPONSE_BIT)),
        _element(0x0120, _us(request.message_id)),
        _element(0x0800, _us(NO_DATA_SET)),
        _element(0x0900, _us(status)),
    ]
    if error_comment:
        comment = error_comment.encode("ascii", errors="replace")[:64]
        elements.append(_element(0x0902, comment + b" " if len(comment) % 2 else comment))
    if request.affected_sop_instance_uid:
        elements.append(_element(0x1000, _uid_bytes(request.affected_sop_instance_uid)))
    body = b"".join(elements)
    return _element(0x0000, struct.pack("<I", len(body))) + body


def encode_command_p_data(context_id: int, command: bytes, max_pdu_length: int = 0) -> bytes:
    """P-DATA-TF PDUs carrying a command set, fragmented so that no PDU exceeds the peer's
    ``max_pdu_length`` (0: unlimited; one PDU).

    Raises:
        ProtocolError: a maximum too small for even one byte of command per PDU.
    """
    room = max_pdu_length - 12 if max_pdu_length else len(command)  # PDU + PDV headers
    if room <= 0:
        raise ProtocolError(
            "peer maximum PDU length too small", AbortReason.INVALID_PDU_PARAMETER_VALUE
        )
    chunks = [command[i : i + room] for i in range(0, len(command), room)]
    pdus = []
    for index, chunk in enumerate(chunks):
        control = 0x03 if index == len(chunks) - 1 else 0x01  # command; last fragment
        pdus.append(
            _pdu(PduType.P_DATA_TF, _PDV_HEADER.pack(len(chunk) + 2, context_id, control) + chunk)
        )
    return b"".join(pdus)


# -- Part 10 -------------------------------------------------------------------------------


def _explicit(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    if vr in (b"OB", b"OW", b"UN", b"SQ", b"UT", b"UC", b"UR"):
        return struct.pack("<HH2sxxI", group, element, vr, len(value)) + value
    return struct.pack("<HH2sH", group, element, vr, len(value)) + value


def _padded(text: str, pad: bytes) -> bytes:
    raw = text.encode("ascii", errors="replace")
    return raw + pad if len(raw) % 2 else raw


def part10_prefix(
    *,
    sop_class_uid: str,
    sop_instance_uid: str,
    transfer_syntax_uid: str,
    implementation_class_uid: str,
    implementation_version_name: str,
    source_ae: str,
) -> bytes:
    """Preamble, ``DICM`` and the File Meta Information group (PS3.10 7.1) of a received
    data set; the data set's bytes follow unchanged."""
    elements = b"".join(
        [
            _explicit(0x0002, 0x0001, b"OB", b"\x00\x01"),
            _explicit(0x0002, 0x0002, b"UI", _padded(sop_class_uid, b"\0")),
            _explicit(0x0002, 0x0003, b"UI", _padded(sop_instance_uid, b"\0")),
            _explicit(0x0002, 0x0010, b"UI", _padded(transfer_syntax_uid, b"\0")),
            _explicit(0x0002, 0x0012, b"UI", _padded(implementation_class_uid, b"\0")),
            _explicit(0x0002, 0x0013, b"SH", _padded(implementation_version_name, b" ")),
            _explicit(0x0002, 0x0016, b"AE", _padded(source_ae, b" ")),
        ]
    )
    group_length = _explicit(0x0002, 0x0000, b"UL", struct.pack("<I", len(elements)))
    return bytes(128) + b"DICM" + group_length + elements
