"""One IPMI request/response of an established RMCP+ session, on the running event loop.

python-ipmi is blocking: a message waits in ``recv`` on its own thread. A bulk power operation
is hundreds of BMCs each answering a few messages, so on one thread per operation every
message is a thread wake-up and a GIL hand-off (docs/performance.md). Here the session's UDP
socket is watched by the event loop's selector instead (``add_reader`` for the time of one
exchange) and the timeout is a loop timer; the packing, the signing and the encryption stay
python-ipmi's (its session keys, corrected by :mod:`bmc.ipmi_keys`), as do the checks a
response must pass (the session ID, the integrity code, the IPMB checksums, the sequence
number). The session is opened by python-ipmi's blocking handshake (:mod:`bmc.ipmi`, run on a
thread) and stays usable by its blocking calls: the socket keeps its blocking mode and is read
here with ``MSG_DONTWAIT`` only.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

from pyipmi.errors import DecodingError
from pyipmi.interfaces.ipmb import IpmbHeaderReq, encode_ipmb_msg, rx_filter
from pyipmi.interfaces.rmcp import RMCP_CLASS_IPMI, RmcpMsg
from pyipmi.interfaces.rmcpplus import PAYLOAD_TYPE_IPMI, unpack_rmcpplus

LOG = logging.getLogger(__name__)


async def send_raw(conn: Any, netfn: int, request: bytes) -> bytes:
    """Send ``request`` (command byte first) on ``conn``'s session and return the response
    (completion code first). Raises ``TimeoutError`` after the interface's timeout, and
    python-ipmi's own errors for a response that fails its checks, as its blocking
    ``send_raw`` does."""
    iface = conn.interface
    header = _header(iface, conn.target.ipmb_address, netfn, request[0])
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[bytes] = loop.create_future()
    sock = iface._sock
    fd = sock.fileno()
    loop.add_reader(fd, _on_readable, iface, header, answer)
    timer = loop.call_later(iface._timeout, _expire, answer)
    try:
        iface._send_payload(PAYLOAD_TYPE_IPMI, encode_ipmb_msg(header, request[1:]))
        return await answer
    finally:
        timer.cancel()
        loop.remove_reader(fd)


def _header(iface: Any, rs_sa: int, netfn: int, cmdid: int) -> IpmbHeaderReq:
    """The IPMB request header, numbered as python-ipmi numbers its own requests."""
    iface._inc_sequence_number()
    header = IpmbHeaderReq()
    header.netfn = netfn
    header.rs_lun = 0
    header.rs_sa = rs_sa
    header.rq_seq = iface.next_sequence_number
    header.rq_lun = 0
    header.rq_sa = iface.slave_address
    header.cmdid = cmdid
    return header


def _on_readable(iface: Any, header: IpmbHeaderReq, answer: asyncio.Future[bytes]) -> None:
    """Read every queued datagram; the one answering ``header`` resolves ``answer``. Late
    answers to earlier requests (one that timed out) are dropped, as python-ipmi drops them."""
    while not answer.done():
        try:
            datagram = iface._sock.recv(4096, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except OSError as exc:  # ICMP port unreachable, surfaced on a connected socket
            answer.set_exception(exc)
            return
        try:
            data = _decode(iface, datagram)
        except Exception as exc:  # python-ipmi's verdict on the message, as its recv gives it
            answer.set_exception(exc)
            return
        if data is not None and rx_filter(header, data, rq_seq=not iface.ignore_rq_seq):
            answer.set_result(data[6:-1])


def _decode(iface: Any, datagram: bytes) -> bytes | None:
    """The IPMI message of a session datagram (``None`` for another payload type), checked and
    decrypted with the session's keys."""
    rmcp = RmcpMsg()
    pdu = rmcp.unpack(datagram)
    if rmcp.class_of_msg != RMCP_CLASS_IPMI:
        raise DecodingError("invalid class field in RMCP message")
    payload_type, session_id, _, payload = unpack_rmcpplus(pdu, iface._keys)
    if session_id != iface._console_session_id:
        raise DecodingError(f"invalid session ID 0x{session_id:08x}")
    if payload_type != PAYLOAD_TYPE_IPMI:
        LOG.debug("ignoring payload type 0x%02x", payload_type)
        return None
    return bytes(payload)


def _expire(answer: asyncio.Future[bytes]) -> None:
    if not answer.done():
        answer.set_exception(TimeoutError())
