"""A read-only, bounded TFTP server on asyncio.

Protocol (RFC 1350): the client sends RRQ (opcode 1: file NUL mode NUL [opt NUL value NUL]...)
to port 69; the server answers from a new port (the transfer ID) with DATA blocks (opcode 3,
16-bit block number, up to blksize bytes); each is acknowledged (opcode 4); a block shorter than
blksize ends the transfer. Options (RFC 2347) are acknowledged with an OACK (opcode 6) that the
client acknowledges with ACK 0: blksize 8..65464 (RFC 2348), tsize and timeout (RFC 2349), and
windowsize (RFC 7440: send N blocks, then wait for one ACK of the last). Block numbers wrap
from 65535 to 0, as tftpd-hpa and curl expect.

Safety: only RRQ is served (WRQ -> error 2, nothing is written); names are confined to the root
(`paths.resolve`); invalid option values are ignored (RFC 2347 allows it); sessions are capped
in total and per client address, requests are rate-limited per address (`limits`), and sessions
are reaped after `timeout * (retries + 1)` of silence; a transfer that is never acknowledged
costs at most 1 + retries transmissions of its first packet (or window).

Speed (`session.Session`): each session has its own connected UDP socket. Lock-step transfers
(windowsize 1) run on a thread of their own, up to `max_threads` at once (`lockstep`: a blocking
recv with SO_RCVTIMEO, 16 KiB of blocks read ahead with one `os.preadv`, one send per ACK); the
others, and every windowed transfer, run on the event loop with `loop.add_reader` (no protocol
objects): windows are read with one `os.preadv` into slots behind prewritten headers and sent
with UDP GSO (one `sendmsg` for up to 64 datagrams).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import stat
import time
from dataclasses import dataclass, field

from pxe.backend import TimelineEvent, TimelineKind, TimelineSink, null_sink
from pxe.errors import PxeError
from pxe.tftp.limits import ClientLimits
from pxe.tftp.packets import (
    E_ACCESS,
    E_ILLEGAL_OP,
    E_NOT_FOUND,
    E_UNDEFINED,
    MAX_BLKSIZE,
    RRQ,
    WRQ,
    Request,
    error_packet,
    parse_rrq,
)
from pxe.tftp.paths import Refused, resolve
from pxe.tftp.session import Session

log = logging.getLogger(__name__)


@dataclass
class TftpStats:
    """Counters of the TFTP server."""

    requests: int = 0
    started: int = 0
    completed: int = 0
    aborted: int = 0
    refused: int = 0
    ignored: int = 0
    bytes_sent: int = 0
    by_error: dict[int, int] = field(default_factory=dict)
    peak_sessions: int = 0
    """Most transfers in flight at once (never above ``max_sessions``)."""
    rate_limited: int = 0
    """Datagrams on the listening port dropped by the per-client rate limit."""
    client_busy: int = 0
    """Requests refused because their address had ``client_max_sessions`` transfers running."""


class TftpServer:
    """Serves regular files under `root`, read-only, on (address, port)."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        address: str,
        port: int = 69,
        sink: TimelineSink = null_sink,
        max_sessions: int = 1000,
        timeout: float = 1.0,
        retries: int = 5,
        max_blksize: int = MAX_BLKSIZE,
        max_windowsize: int = 64,
        max_threads: int = 64,
        interface: str | None = None,
        client_max_sessions: int = 8,
        client_rate: float = 20.0,
        client_burst: int = 40,
    ) -> None:
        if address in ("0.0.0.0", ""):  # noqa: S104
            raise PxeError("refusing to bind the wildcard address")
        self.root = os.path.realpath(os.fspath(root))
        self.address, self.port, self.interface = address, port, interface
        self.sink = sink
        self.max_sessions, self.timeout, self.retries = max_sessions, timeout, retries
        self.max_blksize, self.max_windowsize = max_blksize, max_windowsize
        self.max_threads = max_threads
        self.threads = 0  # lock-step sessions running on their own thread
        self.stats = TftpStats()
        self.gso = True  # cleared if the kernel refuses UDP_SEGMENT
        self.sessions: dict[tuple[str, int], Session] = {}
        self.limits = ClientLimits(client_max_sessions, client_rate, client_burst)
        self._sock: socket.socket | None = None
        self.loop: asyncio.AbstractEventLoop

    @property
    def bound_port(self) -> int:
        assert self._sock is not None
        return int(self._sock.getsockname()[1])

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            if self.interface:
                sock.setsockopt(
                    socket.SOL_SOCKET, socket.SO_BINDTODEVICE, self.interface.encode() + b"\0"
                )
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            sock.bind((self.address, self.port))
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self.loop.add_reader(sock.fileno(), self._on_main)
        log.info(
            "tftp started address=%s port=%s root=%s", self.address, self.bound_port, self.root
        )

    async def stop(self) -> None:
        threads = [s.thread for s in self.sessions.values() if s.thread is not None]
        for s in list(self.sessions.values()):
            s.finish(False, "server stopping")
        for t in threads:  # woken by finish(); they close their sockets and files on the way out
            await asyncio.to_thread(t.join, 5.0)
        if self._sock is not None:
            self.loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None

    def emit(self, kind: TimelineKind, peer: tuple[str, int], **detail: object) -> None:
        try:
            self.sink(TimelineEvent(kind=kind, client=f"{peer[0]}:{peer[1]}", detail=detail))
        except Exception:  # noqa: BLE001 - a sink must never take the server down
            log.exception("timeline sink failed")

    # -- the listening socket ------------------------------------------------------------------
    def _on_main(self) -> None:
        sock = self._sock
        for _ in range(256):  # bounded drain so sessions get their turn
            if sock is None:
                return
            try:
                data, peer = sock.recvfrom(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # ICMP errors from earlier error replies; nothing to do
            try:
                self._on_request(data, peer)
            except Exception:  # noqa: BLE001 - one bad datagram must never stop the server
                log.exception("tftp request crashed peer=%s", peer)
                self.stats.ignored += 1

    def _reply_error(self, peer: tuple[str, int], code: int, message: str) -> None:
        self.stats.refused += 1
        self.stats.by_error[code] = self.stats.by_error.get(code, 0) + 1
        if self._sock is not None:
            try:
                self._sock.sendto(error_packet(code, message), peer)
            except OSError:
                pass

    def session_closed(self, peer: tuple[str, int]) -> None:
        """Called by a session when it ends (``Session.finish``)."""
        if self.sessions.pop(peer, None) is not None:
            self.limits.closed(peer[0])

    def _on_request(self, data: bytes, peer: tuple[str, int]) -> None:
        self.stats.requests += 1
        if self.limits.request(peer[0], time.monotonic()) is not None:
            self.stats.rate_limited += 1
            return  # silently: a reply to a flood (maybe spoofed) would amplify it
        accepted = self._accept(data, peer)
        if accepted is None:
            return
        req, path = accepted
        opened = self._open(peer, path)
        if opened is None:
            return
        fd, size, sock = opened
        self._begin(peer, req, fd, size, sock)

    def _accept(self, data: bytes, peer: tuple[str, int]) -> tuple[Request, str] | None:
        """The read request and its confined path, or ``None`` (refused, ignored or busy)."""
        if len(data) < 2 or data[0] != 0:
            self.stats.ignored += 1
            return None  # garbage: silence
        op = data[1]
        if op == WRQ:
            self._reply_error(peer, E_ACCESS, "this server is read-only")
            self.emit(TimelineKind.TFTP_REFUSED, peer, reason="write request")
            return None
        if op != RRQ:
            self._reply_error(peer, E_ILLEGAL_OP, "illegal TFTP operation")
            return None
        if peer in self.sessions:
            self.stats.ignored += 1  # a retransmitted RRQ: the session already answers
            return None
        try:
            req = parse_rrq(data[2:], self.max_blksize, self.max_windowsize)
            path = resolve(self.root, req.filename)
        except Refused as exc:
            self._reply_error(peer, exc.code, exc.message)
            self.emit(
                TimelineKind.TFTP_REFUSED,
                peer,
                file=data[2:66].split(b"\0", 1)[0].decode("ascii", "replace"),
                reason=exc.message,
            )
            return None
        if len(self.sessions) >= self.max_sessions:
            self._reply_error(peer, E_UNDEFINED, "server busy")
            return None
        if self.limits.may_open(peer[0]) is not None:
            self.stats.client_busy += 1
            self._reply_error(peer, E_UNDEFINED, "too many transfers from this client")
            return None
        return req, path

    def _open(self, peer: tuple[str, int], path: str) -> tuple[int, int, socket.socket] | None:
        """The file (descriptor, size) and the transfer's own socket, or ``None`` (refused)."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            code = E_NOT_FOUND if exc.errno == errno.ENOENT else E_ACCESS
            self._reply_error(peer, code, "cannot open file")
            return None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise Refused(E_NOT_FOUND, "not a regular file")
            sock = self._transfer_socket(peer)
        except Refused as exc:
            os.close(fd)
            self._reply_error(peer, exc.code, exc.message)
            return None
        except OSError:
            os.close(fd)
            self._reply_error(peer, E_UNDEFINED, "no resources")
            return None
        return fd, st.st_size, sock

    def _transfer_socket(self, peer: tuple[str, int]) -> socket.socket:
        """A UDP socket on a new port (the transfer ID), connected to ``peer``."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            if self.interface:
                sock.setsockopt(
                    socket.SOL_SOCKET, socket.SO_BINDTODEVICE, self.interface.encode() + b"\0"
                )
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
            sock.bind((self.address, 0))
            sock.connect(peer)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    def _begin(
        self, peer: tuple[str, int], req: Request, fd: int, size: int, sock: socket.socket
    ) -> None:
        name = req.filename.decode("ascii")
        session = Session(self, sock, fd, peer, name, size, req)
        self.sessions[peer] = session
        self.limits.opened(peer[0], time.monotonic())
        self.stats.started += 1
        self.stats.peak_sessions = max(self.stats.peak_sessions, len(self.sessions))
        self.emit(
            TimelineKind.TFTP_START,
            peer,
            file=name,
            size=size,
            blksize=session.blksize,
            windowsize=session.window,
        )
        threaded = session.window == 1 and self.threads < self.max_threads
        if threaded:
            self.threads += 1
        session.start(threaded)
