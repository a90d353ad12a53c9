"""The native DICOM node at the wire level: negotiation, rejections, aborts, limits.

The PDUs here are written by hand from PS3.8 (not with the node's own encoders), so a
misreading of the standard in :mod:`cmrqc_ingest.dul` cannot hide behind a matching test.
Peers that speak the whole protocol (pynetdicom, DCMTK, Orthanc) are in ``test_scp.py``,
``test_fuzz.py`` and ``test_orthanc.py``.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from ingest_testing import RecordingPublisher, make_settings, wait_for
from pydicom import dcmread
from pynetdicom import AE, build_context

from cmrqc_ingest import dul
from cmrqc_ingest.service import IngestService
from cmrqc_ingest.status import StoreStatus
from cmrqc_shared.blobs import BlobStore
from cmrqc_shared.events import VolumeReady

MR = "1.2.840.10008.5.1.4.1.1.4"
VERIFICATION = "1.2.840.10008.1.1"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
BIG_ENDIAN = "1.2.840.10008.1.2.2"
CT = "1.2.840.10008.5.1.4.1.1.2"
UNKNOWN_SOP = "1.2.3.4.5.6.7.8.9"


def _item(item_type: int, value: bytes) -> bytes:
    return struct.pack(">BxH", item_type, len(value)) + value


def _uid(text: str) -> bytes:
    raw = text.encode()
    return raw + b"\0" if len(raw) % 2 else raw


def associate_rq(
    contexts: list[tuple[int, str, list[str]]],
    *,
    calling: str = "TESTSCU",
    called: str = "CMRQC",
    max_pdu: int = 16384,
    version: int = 1,
    application_context: str = "1.2.840.10008.3.1.1.1",
) -> bytes:
    body = struct.pack(">HH", version, 0) + called.ljust(16).encode() + calling.ljust(16).encode()
    body += bytes(32) + _item(0x10, application_context.encode())
    for context_id, abstract, syntaxes in contexts:
        sub = _item(0x30, abstract.encode()) + b"".join(_item(0x40, t.encode()) for t in syntaxes)
        body += _item(0x20, bytes([context_id, 0, 0, 0]) + sub)
    user = _item(0x51, struct.pack(">I", max_pdu)) + _item(0x52, b"1.2.3.4")
    user += _item(0x54, struct.pack(">H", len(MR)) + MR.encode() + b"\x01\x00")  # role selection
    body += _item(0x50, user)
    return struct.pack(">BxI", 0x01, len(body)) + body


def command(fields: list[tuple[int, bytes]]) -> bytes:
    """An Implicit VR Little Endian group 0000 command set (with its group length)."""
    body = b"".join(struct.pack("<HHI", 0, element, len(v)) + v for element, v in fields)
    return struct.pack("<HHI", 0, 0, 4) + struct.pack("<I", len(body)) + body


def us(value: int) -> bytes:
    return struct.pack("<H", value)


def p_data(context_id: int, control: int, data: bytes) -> bytes:
    pdv = struct.pack(">IBB", len(data) + 2, context_id, control) + data
    return struct.pack(">BxI", 0x04, len(pdv)) + pdv


class Peer:
    """A bare TCP peer that reads whole PDUs."""

    def __init__(self, port: int, timeout_s: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _exact(self, count: int) -> bytes:
        chunks = b""
        while len(chunks) < count:
            chunk = self.sock.recv(count - len(chunks))
            if not chunk:
                raise ConnectionError("closed")
            chunks += chunk
        return chunks

    def pdu(self) -> tuple[int, bytes]:
        pdu_type, length = struct.unpack(">BxI", self._exact(6))
        return pdu_type, self._exact(length)

    def closed(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except OSError:
            return True

    def close(self) -> None:
        self.sock.close()


def parse_ac_contexts(body: bytes) -> dict[int, tuple[int, str]]:
    """Context id -> (result, transfer syntax) of an A-ASSOCIATE-AC body."""
    out = {}
    offset = 68
    while offset < len(body):
        item_type, length = struct.unpack_from(">BxH", body, offset)
        value = body[offset + 4 : offset + 4 + length]
        if item_type == 0x21:
            ts_len = struct.unpack_from(">H", value, 6)[0]
            out[value[0]] = (value[2], value[8 : 8 + ts_len].rstrip(b"\0").decode())
        offset += 4 + length
    return out


def parse_response(body: bytes) -> dict[int, bytes]:
    """Element -> value of the command set carried by one P-DATA-TF body."""
    length, _context, control = struct.unpack_from(">IBB", body, 0)
    assert control & 0x03 == 0x03, "one last command fragment"
    data = body[6 : 4 + length]
    fields = {}
    offset = 0
    while offset < len(data):
        _group, element, size = struct.unpack_from("<HHI", data, offset)
        fields[element] = data[offset + 8 : offset + 8 + size]
        offset += 8 + size
    return fields


@pytest.fixture
def node(tmp_path: Path, blobs: BlobStore) -> Iterator[tuple[IngestService, RecordingPublisher]]:
    recorder = RecordingPublisher()
    service = IngestService(
        make_settings(
            tmp_path, max_associations=2, network_timeout_s=1.0, max_instance_bytes=400_000
        ),
        publisher=recorder,
        blobs=blobs,
    )
    service.start()
    yield service, recorder
    service.stop(grace_s=1)


def _associated(port: int, contexts: list[tuple[int, str, list[str]]], **kwargs: object) -> Peer:
    peer = Peer(port)
    peer.send(associate_rq(contexts, **kwargs))  # type: ignore[arg-type]
    pdu_type, _ = peer.pdu()
    assert pdu_type == 0x02
    return peer


def test_contexts_are_negotiated_per_abstract_and_transfer_syntax(node) -> None:  # type: ignore[no-untyped-def]
    service, _ = node
    peer = Peer(service.dicom_port)
    peer.send(
        associate_rq(
            [
                (1, MR, [IMPLICIT_LE, EXPLICIT_LE]),  # ours preferred: Explicit VR LE first
                (3, UNKNOWN_SOP, [EXPLICIT_LE]),
                (5, MR, [BIG_ENDIAN]),
                (7, VERIFICATION, [IMPLICIT_LE]),
                (9, CT, [EXPLICIT_LE]),  # accept_all_storage: every storage class
            ]
        )
    )
    pdu_type, body = peer.pdu()
    assert pdu_type == 0x02
    assert body[4:20] == b"CMRQC".ljust(16) and body[20:36] == b"TESTSCU".ljust(16)
    assert parse_ac_contexts(body) == {
        1: (0, EXPLICIT_LE),
        3: (3, ""),
        5: (4, ""),
        7: (0, IMPLICIT_LE),
        9: (0, EXPLICIT_LE),
    }
    peer.send(struct.pack(">BxI", 0x05, 4) + bytes(4))  # A-RELEASE-RQ
    assert peer.pdu()[0] == 0x06
    peer.close()


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"version": 2}, (1, 2, 2)),  # protocol version not supported (ACSE)
        ({"application_context": "1.2.3"}, (1, 1, 2)),  # application context name
    ],
)
def test_an_impossible_association_is_rejected_with_the_standard_reason(  # type: ignore[no-untyped-def]
    node, kwargs: dict[str, object], expected: tuple[int, int, int]
) -> None:
    service, _ = node
    peer = Peer(service.dicom_port)
    peer.send(associate_rq([(1, MR, [EXPLICIT_LE])], **kwargs))  # type: ignore[arg-type]
    pdu_type, body = peer.pdu()
    assert pdu_type == 0x03
    assert (body[1], body[2], body[3]) == expected
    assert peer.closed()


def test_associations_over_the_limit_are_rejected_transiently_and_the_slot_comes_back(  # type: ignore[no-untyped-def]
    node,
) -> None:
    service, _ = node
    held = [_associated(service.dicom_port, [(1, VERIFICATION, [IMPLICIT_LE])]) for _ in range(2)]
    extra = Peer(service.dicom_port)
    extra.send(associate_rq([(1, VERIFICATION, [IMPLICIT_LE])]))
    pdu_type, body = extra.pdu()
    assert pdu_type == 0x03 and (body[1], body[2], body[3]) == (2, 3, 2)  # local limit
    held[0].send(struct.pack(">BxI", 0x05, 4) + bytes(4))
    assert held[0].pdu()[0] == 0x06
    held[0].close()
    wait_for(lambda: service.active_associations <= 1)
    again = _associated(service.dicom_port, [(1, VERIFICATION, [IMPLICIT_LE])])
    for peer in (again, held[1], extra):
        peer.close()


def test_c_echo_and_an_unknown_operation_are_answered(node) -> None:  # type: ignore[no-untyped-def]
    service, _ = node
    peer = _associated(service.dicom_port, [(1, VERIFICATION, [IMPLICIT_LE])])
    echo = command(
        [(0x0002, _uid(VERIFICATION)), (0x0100, us(0x0030)), (0x0110, us(7)), (0x0800, us(0x0101))]
    )
    peer.send(p_data(1, 0x03, echo))
    pdu_type, body = peer.pdu()
    fields = parse_response(body)
    assert pdu_type == 0x04
    assert struct.unpack("<H", fields[0x0100])[0] == 0x8030
    assert struct.unpack("<H", fields[0x0120])[0] == 7
    assert struct.unpack("<H", fields[0x0900])[0] == 0
    find = command(
        [(0x0002, _uid(VERIFICATION)), (0x0100, us(0x0020)), (0x0110, us(8)), (0x0800, us(0x0101))]
    )
    peer.send(p_data(1, 0x03, find))
    fields = parse_response(peer.pdu()[1])
    assert struct.unpack("<H", fields[0x0100])[0] == 0x8020
    assert struct.unpack("<H", fields[0x0900])[0] == 0x0211  # unrecognised operation
    peer.close()


def test_a_store_split_over_many_small_pdus_assembles_and_the_answer_respects_our_peer_s_pdu_size(  # type: ignore[no-untyped-def]
    make_study, node
) -> None:
    service, recorder = node
    _, paths = make_study()
    peer = _associated(service.dicom_port, [(1, MR, [EXPLICIT_LE])], max_pdu=64)
    for message_id, path in enumerate(paths, start=1):
        ds = dcmread(path)
        raw = path.read_bytes()
        offset = 132 + 12 + struct.unpack_from("<I", raw, 140)[0]  # preamble, DICM, meta group
        data_set = raw[offset:]
        request = command(
            [
                (0x0002, _uid(MR)),
                (0x0100, us(0x0001)),
                (0x0110, us(message_id)),
                (0x0700, us(0)),
                (0x0800, us(0x0000)),
                (0x1000, _uid(str(ds.SOPInstanceUID))),
            ]
        )
        peer.send(p_data(1, 0x01, request[:20]) + p_data(1, 0x03, request[20:]))
        fragments = [data_set[i : i + 4000] for i in range(0, len(data_set), 4000)]
        for index, fragment in enumerate(fragments):
            peer.send(p_data(1, 0x02 if index == len(fragments) - 1 else 0x00, fragment))
        # a 64-byte maximum PDU: the response arrives as several command fragments
        collected = b""
        while True:
            pdu_type, body = peer.pdu()
            assert pdu_type == 0x04 and len(body) + 6 <= 64
            length, _, control = struct.unpack_from(">IBB", body, 0)
            collected += body[6 : 4 + length]
            if control & 0x02:
                break
        status = collected.find(struct.pack("<HHI", 0, 0x0900, 2))
        assert struct.unpack_from("<H", collected, status + 8)[0] == 0
    peer.send(struct.pack(">BxI", 0x05, 4) + bytes(4))
    assert peer.pdu()[0] == 0x06
    wait_for(lambda: len(recorder.of_type(VolumeReady)) == 2)
    peer.close()


def test_an_oversize_instance_is_refused_without_being_held(make_study, node) -> None:  # type: ignore[no-untyped-def]
    service, _ = node
    peer = _associated(service.dicom_port, [(1, MR, [EXPLICIT_LE])])
    request = command(
        [
            (0x0002, _uid(MR)),
            (0x0100, us(1)),
            (0x0110, us(1)),
            (0x0800, us(0)),
            (0x1000, _uid("1.2.3.99")),
        ]
    )
    peer.send(p_data(1, 0x03, request))
    chunk = bytes(16000)
    for index in range(40):  # 640 kB against a 400 kB limit
        peer.send(p_data(1, 0x02 if index == 39 else 0x00, chunk))
    fields = parse_response(peer.pdu()[1])
    assert struct.unpack("<H", fields[0x0900])[0] == StoreStatus.OUT_OF_RESOURCES_LIMIT
    assert b"too-large" in fields[0x0902]
    echo = command(
        [(0x0002, _uid(MR)), (0x0100, us(0x0030)), (0x0110, us(2)), (0x0800, us(0x0101))]
    )
    peer.send(p_data(1, 0x03, echo))  # the association goes on
    assert struct.unpack("<H", parse_response(peer.pdu()[1])[0x0900])[0] == 0
    peer.close()


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (p_data(3, 0x03, b"\0" * 8), 6),  # a presentation context never accepted
        (p_data(1, 0x02, b"\0" * 8), 5),  # a data set fragment before any command
        (struct.pack(">BxI", 0x09, 4) + bytes(4), 1),  # no such PDU type
        (associate_rq([(1, MR, [EXPLICIT_LE])]), 2),  # A-ASSOCIATE-RQ again
        (struct.pack(">BxI", 0x04, 3) + b"\0\0\0", 6),  # PDV item cut short
    ],
)
def test_protocol_errors_are_answered_with_a_p_abort_naming_the_reason(  # type: ignore[no-untyped-def]
    node, payload: bytes, reason: int
) -> None:
    service, _ = node
    peer = _associated(service.dicom_port, [(1, MR, [EXPLICIT_LE])])
    peer.send(payload)
    pdu_type, body = peer.pdu()
    assert pdu_type == 0x07 and body[2] == 2 and body[3] == reason
    assert peer.closed()
    check = _associated(service.dicom_port, [(1, VERIFICATION, [IMPLICIT_LE])])  # still serving
    check.close()


def test_a_silent_association_is_aborted_after_the_network_timeout(node) -> None:  # type: ignore[no-untyped-def]
    service, _ = node
    peer = _associated(service.dicom_port, [(1, MR, [EXPLICIT_LE])])
    started = time.monotonic()
    pdu_type, _ = peer.pdu()  # network_timeout_s = 1
    assert pdu_type == 0x07
    assert time.monotonic() - started < 5
    assert peer.closed()


def test_a_pdu_before_association_and_an_abort_by_the_peer_leave_the_node_healthy(node) -> None:  # type: ignore[no-untyped-def]
    service, _ = node
    early = Peer(service.dicom_port)
    early.send(p_data(1, 0x03, b"\0" * 8))
    pdu_type, body = early.pdu()
    assert pdu_type == 0x07 and body[3] == 2  # unexpected PDU
    peer = _associated(service.dicom_port, [(1, MR, [EXPLICIT_LE])])
    peer.send(struct.pack(">BxI", 0x07, 4) + bytes(4))  # A-ABORT from the user
    assert peer.closed()
    ae = AE(ae_title="CHECK")
    ae.requested_contexts = [build_context(VERIFICATION)]
    assoc = ae.associate("127.0.0.1", service.dicom_port, ae_title="CMRQC")
    assert assoc.is_established and assoc.send_c_echo().Status == 0
    assoc.release()


def test_the_pynetdicom_engine_is_still_selectable(  # type: ignore[no-untyped-def]
    make_study, tmp_path: Path, blobs: BlobStore
) -> None:
    from cmrqc_ingest.senders import send_cstore

    _, paths = make_study()
    recorder = RecordingPublisher()
    service = IngestService(
        make_settings(tmp_path, scp_engine="pynetdicom"), publisher=recorder, blobs=blobs
    )
    service.start()
    try:
        assert send_cstore("127.0.0.1", service.dicom_port, paths) == [0] * len(paths)
        wait_for(lambda: len(recorder.of_type(VolumeReady)) == 2)
    finally:
        service.stop(grace_s=1)


def test_the_implementation_uid_is_a_valid_uid() -> None:
    from cmrqc_ingest.native_scp import IMPLEMENTATION_CLASS_UID

    assert len(IMPLEMENTATION_CLASS_UID) <= 64
    assert all(
        part.isdigit() and (part == "0" or not part.startswith("0"))
        for part in IMPLEMENTATION_CLASS_UID.split(".")
    )
    assert dul.APPLICATION_CONTEXT == "1.2.840.10008.3.1.1.1"


def test_a_connection_flood_is_closed_at_accept_beyond_twice_the_association_limit(node) -> None:  # type: ignore[no-untyped-def]
    service, _ = node  # max_associations = 2
    idle = [Peer(service.dicom_port) for _ in range(4)]  # connected, nothing sent yet
    wait_for(lambda: service.active_associations == 4, timeout_s=5)
    flood = Peer(service.dicom_port)
    assert flood.closed()  # closed without a thread or an answer
    for peer in (*idle, flood):
        peer.close()
    wait_for(lambda: service.active_associations == 0, timeout_s=5)
    check = _associated(service.dicom_port, [(1, VERIFICATION, [IMPLICIT_LE])])
    check.close()
