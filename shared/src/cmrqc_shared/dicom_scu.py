"""Helpers for pynetdicom associations used as an SCU (simulator, senders, tests).

Duck-typed on pynetdicom's objects, so this package does not depend on pynetdicom.

* :func:`set_tcp_nodelay`: an ``EVT_CONN_OPEN`` handler. Nagle's algorithm with DICOM's small
  PDUs costs ~40 ms a round trip on loopback.
* :func:`guard_response_race`: pynetdicom's association reactor and ``send_c_store`` /
  ``send_c_echo`` share one message queue, and the reactor is paused with a flag that can be
  stale for a moment after the previous request (pydicom/pynetdicom#875). Against a node that
  answers within a millisecond, the reactor then sometimes takes the response itself, logs
  "Received unexpected C-STORE service message" and drops it, and the sender waits for the
  DIMSE timeout. The guard hands such a response back to the queue the sender waits on.
"""

from __future__ import annotations

import socket
from typing import Any


def set_tcp_nodelay(event: Any) -> None:
    """``EVT_CONN_OPEN`` handler: TCP_NODELAY on the association's socket."""
    sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def guard_response_race(assoc: Any) -> Any:
    """Make ``assoc`` (a pynetdicom Association) requeue responses its reactor took by
    mistake, so the waiting ``send_*`` call gets them; returns ``assoc``."""
    serve_request = assoc._serve_request

    def serve(msg: Any, context_id: int) -> None:
        if not msg.is_valid_request and msg.is_valid_response:
            assoc.dimse.msg_queue.put((context_id, msg))
            return
        serve_request(msg, context_id)

    assoc._serve_request = serve
    return assoc
