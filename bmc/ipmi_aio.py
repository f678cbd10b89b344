"""IPMI over RMCP+ on the running event loop: one request/response of an established session
(:func:`send_raw`), and python-ipmi's own session handshake (:func:`run_blocking` with a
:class:`LoopSocket`).

python-ipmi is blocking: a message waits in ``recv`` on its own thread. A bulk power operation
is hundreds of BMCs each answering a few messages, so on one thread per operation every message
is a thread wake-up and a GIL hand-off (docs/performance.md). Here the session's UDP socket is
watched by the event loop's selector instead (``add_reader`` from the first exchange of an
operation to its end, :func:`detach`) and the timeout is a loop timer; the packing, the signing
and the encryption stay python-ipmi's (its session keys, corrected by :mod:`bmc.ipmi_keys`), as
do the checks a response must pass (the session ID, the integrity code, the IPMB checksums, the
sequence number). The session stays usable by python-ipmi's blocking calls: the socket keeps its
blocking mode and is read here with ``MSG_DONTWAIT`` only.

The handshake (Get Channel Authentication Capabilities, Open Session, RAKP 1-4, Set Session
Privilege Level) is python-ipmi's blocking code, run unchanged: :func:`run_blocking` runs it in a
greenlet, and the one place where it waits, ``recv`` on its UDP socket, is a :class:`LoopSocket`
whose ``recv`` hands an awaitable (readable, or the socket's timeout) to the loop and resumes
the greenlet with the datagram. The messages, the RAKP HMACs, the session keys and every check
stay python-ipmi's; no thread is involved. A greenlet switch costs ~0.65 us here (measured on
the 2-core bench VM); before, each of the handshake's 5 round trips woke a pool thread and
handed it the GIL.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

import greenlet
from pyipmi.errors import DecodingError
from pyipmi.interfaces.ipmb import IpmbHeaderReq, encode_ipmb_msg, rx_filter
from pyipmi.interfaces.rmcp import RMCP_CLASS_IPMI, RmcpMsg
from pyipmi.interfaces.rmcpplus import PAYLOAD_TYPE_IPMI, unpack_rmcpplus

LOG = logging.getLogger(__name__)
T = TypeVar("T")


async def send_raw(conn: Any, netfn: int, request: bytes) -> bytes:
    """Send ``request`` (command byte first) on ``conn``'s session and return the response
    (completion code first). Raises ``TimeoutError`` after the interface's timeout, and
    python-ipmi's own errors for a response that fails its checks, as its blocking
    ``send_raw`` does. The session's socket stays on the loop's selector after the exchange,
    until :func:`detach` (the end of the operation): a bulk operation makes ~5 exchanges per
    BMC, and registering a socket costs the loop a poll handle and two system calls."""
    iface = conn.interface
    header = _header(iface, conn.target.ipmb_address, netfn, request[0])
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[bytes] = loop.create_future()
    if getattr(iface, "_bronze_loop", None) is not loop:
        detach(conn)
        loop.add_reader(iface._sock.fileno(), _on_readable, iface)
        iface._bronze_loop = loop
    iface._bronze_pending = (header, answer)
    timer = loop.call_later(iface._timeout, _expire, answer)
    try:
        iface._send_payload(PAYLOAD_TYPE_IPMI, encode_ipmb_msg(header, request[1:]))
        return await answer
    finally:
        timer.cancel()
        iface._bronze_pending = None


def detach(conn: Any) -> None:
    """Take ``conn``'s socket off the loop's selector (a no-op if it is not on one). Called on
    the loop's thread, before the session is closed, parked or used by a blocking call."""
    iface = conn.interface
    loop = getattr(iface, "_bronze_loop", None)
    if loop is None:
        return
    iface._bronze_loop = None
    iface._bronze_pending = None
    if not loop.is_closed():
        loop.remove_reader(iface._sock.fileno())


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


def _on_readable(iface: Any) -> None:
    """Read one datagram; the one answering the pending exchange's header resolves it. Late
    answers to earlier requests (one that timed out), and anything between two exchanges, are
    dropped, as python-ipmi drops them. One per call: the socket has a timeout (the blocking
    calls share it), and a Python socket with a timeout polls for up to that long before a
    receive when nothing is queued; the selector calls again while datagrams are queued."""
    pending = getattr(iface, "_bronze_pending", None)
    try:
        datagram = iface._sock.recv(4096, socket.MSG_DONTWAIT)
    except BlockingIOError:
        return
    except OSError as exc:  # ICMP port unreachable, surfaced on a connected socket
        if pending is not None and not pending[1].done():
            pending[1].set_exception(exc)
        return
    if pending is None or pending[1].done():
        return
    header, answer = pending
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


# -- blocking python-ipmi code on the loop (the session handshake) -------------------------------


class _Bridge(greenlet.greenlet):  # type: ignore[misc]
    """A greenlet run by :func:`run_blocking`: its socket waits are awaited by its parent."""


async def run_blocking(fn: Callable[[], T]) -> T:
    """Run ``fn`` (blocking-style code whose only waits are :class:`LoopSocket` receives) on the
    running loop and return its result, or raise its exception. Each wait suspends ``fn`` and is
    awaited here; a cancellation of this coroutine is raised inside ``fn`` where it waits."""
    child = _Bridge(fn)
    child.gr_context = contextvars.copy_context()  # the caller's log context (request, machine)
    request = child.switch()
    while not child.dead:
        try:
            value = await cast(Awaitable[Any], request)
        except BaseException as exc:  # noqa: BLE001 - handed to fn, where it waited
            request = child.throw(exc)
        else:
            request = child.switch(value)
    return cast(T, request)


class LoopSocket:
    """A connected UDP socket as python-ipmi uses it (``connect``, ``send``, ``recv``,
    ``settimeout``, ``close``) whose ``recv``, inside :func:`run_blocking`, waits on the event
    loop instead of blocking the thread: the datagram, ``TimeoutError`` after the timeout set
    (as a blocking socket raises it), or the socket's error (ICMP port unreachable:
    ``ConnectionRefusedError``). The socket itself is non-blocking meanwhile (a Python socket
    with a timeout polls before every receive, ``MSG_DONTWAIT`` or not); :meth:`release` gives
    it back with the timeout python-ipmi set."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.timeout = sock.gettimeout()
        sock.settimeout(0.0)

    def release(self) -> socket.socket:
        """The plain socket again, blocking with the timeout set (unless it was closed)."""
        if self.sock.fileno() != -1:
            self.sock.settimeout(self.timeout)
        return self.sock

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        me = greenlet.getcurrent()
        if not isinstance(me, _Bridge):
            raise RuntimeError("LoopSocket.recv outside ipmi_aio.run_blocking")
        try:
            return self.sock.recv(bufsize, flags)
        except BlockingIOError:
            pass
        return cast(bytes, me.parent.switch(self._readable(bufsize, flags)))

    async def _readable(self, bufsize: int, flags: int) -> bytes:
        loop = asyncio.get_running_loop()
        got: asyncio.Future[bytes] = loop.create_future()
        sock, fd = self.sock, self.sock.fileno()

        def on_readable() -> None:
            if got.done():
                return
            try:
                got.set_result(sock.recv(bufsize, flags))
            except BlockingIOError:  # woken for nothing (e.g. a datagram with a bad checksum)
                return
            except OSError as exc:
                got.set_exception(exc)

        loop.add_reader(fd, on_readable)
        timeout = self.timeout
        timer = None if timeout is None else loop.call_later(timeout, _timed_out, got)
        try:
            return await got
        finally:
            if timer is not None:
                timer.cancel()
            loop.remove_reader(fd)

    def send(self, data: bytes, flags: int = 0) -> int:  # UDP: never waits long
        return self.sock.send(data, flags)

    def connect(self, address: Any) -> None:
        self.sock.connect(address)

    def settimeout(self, timeout: float | None) -> None:
        self.timeout = timeout

    def gettimeout(self) -> float | None:
        return self.timeout

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()


def _timed_out(got: asyncio.Future[bytes]) -> None:
    if not got.done():
        got.set_exception(TimeoutError("timed out"))  # a blocking socket's words
