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
and reaped after `timeout * (retries + 1)` of silence; a transfer that is never acknowledged
costs at most 1 + retries transmissions of its first packet (or window).

Speed: each session has its own connected UDP socket, read with `loop.add_reader` (no protocol
objects), file data is read with `os.preadv` straight into a reusable buffer behind a prebuilt
header, and sent with one `send` per block.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import stat
import struct
import time
from dataclasses import dataclass, field

from pxe.backend import TimelineEvent, TimelineKind, TimelineSink, null_sink
from pxe.errors import PxeError
from pxe.tftp.paths import Refused, resolve

log = logging.getLogger(__name__)

RRQ, WRQ, DATA, ACK, ERROR, OACK = 1, 2, 3, 4, 5, 6
E_UNDEFINED, E_NOT_FOUND, E_ACCESS, E_ILLEGAL_OP, E_UNKNOWN_TID, E_OPTION = 0, 1, 2, 4, 5, 8
MAX_BLKSIZE = 65464
_HDR = struct.Struct("!HH")


def error_packet(code: int, message: str) -> bytes:
    return _HDR.pack(ERROR, code) + message.encode("ascii", "replace")[:200] + b"\0"


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


@dataclass(frozen=True)
class Request:
    """A parsed RRQ: file name bytes, mode, and the options we accepted (already validated)."""

    filename: bytes
    mode: str
    blksize: int | None = None
    tsize: bool = False
    timeout: float | None = None
    windowsize: int | None = None


def parse_rrq(data: bytes, max_blksize: int, max_window: int) -> Request:
    """Parses an RRQ body (after the opcode). Raises `Refused` with the error to send."""
    if not data.endswith(b"\0"):
        raise Refused(E_ILLEGAL_OP, "request not NUL-terminated")
    fields = data[:-1].split(b"\0")
    if len(fields) < 2 or not fields[0]:
        raise Refused(E_ILLEGAL_OP, "missing file name or mode")
    mode = fields[1].decode("latin-1").lower()
    if mode not in ("octet", "netascii"):
        raise Refused(E_ILLEGAL_OP, "only octet and netascii modes are served")
    opts: dict[str, str] = {}
    rest = fields[2:]
    for i in range(0, len(rest) - 1, 2):  # an odd trailing field is ignored
        opts[rest[i].decode("latin-1").lower()] = rest[i + 1].decode("latin-1")
    blksize = tsize = timeout = window = None
    if (v := _int(opts.get("blksize"))) is not None and 8 <= v <= MAX_BLKSIZE:
        blksize = min(v, max_blksize)
    if (v := _int(opts.get("tsize"))) is not None and v >= 0:
        tsize = True
    if (v := _int(opts.get("timeout"))) is not None and 1 <= v <= 255:
        timeout = float(v)
    if (v := _int(opts.get("windowsize"))) is not None and 1 <= v <= 65535:
        window = min(v, max_window)
    return Request(fields[0], mode, blksize, bool(tsize), timeout, window)


def _int(s: str | None) -> int | None:
    if s is None or not s.isdigit() or len(s) > 10:
        return None
    return int(s)


UDP_SEGMENT = 103  # linux/udp.h: UDP generic segmentation offload (Linux >= 4.18)
GSO_MAX_BYTES = 65000  # one send() carries at most ~64 KiB ...
GSO_MAX_SEGMENTS = 64  # ... and at most 64 datagrams
READAHEAD_BYTES = 16384  # per lock-step session: 1,000 sessions cost at most ~16 MiB


class _Session:
    """One read transfer: a connected socket, the file, and the window state.

    Block `i` (1-based) holds file bytes [(i-1)*blksize, i*blksize). `acked` is the highest block
    the client acknowledged (-1 while an OACK awaits its ACK 0), `sent` the highest block sent.
    Windows of several blocks are read with one preadv into per-block slots behind prewritten
    headers and, where the kernel allows, sent with one send() using UDP GSO (UDP_SEGMENT).
    """

    __slots__ = (
        "server",
        "sock",
        "fd",
        "peer",
        "name",
        "size",
        "blksize",
        "window",
        "timeout",
        "last",
        "acked",
        "sent",
        "tries",
        "progress",
        "cmsg",
        "ra_first",
        "ra_count",
        "ra_bytes",
        "seen",
        "timer",
        "buf",
        "view",
        "slots",
        "oack",
        "started_at",
        "done",
        "gso",
        "stride",
    )

    def __init__(
        self,
        server: TftpServer,
        sock: socket.socket,
        fd: int,
        peer: tuple[str, int],
        name: str,
        size: int,
        req: Request,
    ) -> None:
        self.server, self.sock, self.fd, self.peer, self.name = server, sock, fd, peer, name
        self.size = size
        bs = self.blksize = req.blksize or 512
        self.window = req.windowsize or 1
        self.timeout = req.timeout or server.timeout
        self.last = size // bs + 1  # index of the final (short or empty) block
        self.acked = 0
        self.sent = 0
        self.tries = 0
        self.progress = 0  # bumped on every useful ACK; the timer compares it with `seen`
        self.seen = 0
        self.stride = 4 + bs
        # Lock-step transfers read ahead READAHEAD_BYTES worth of blocks with one preadv and
        # send them one per ACK; windows reuse the same slots.
        nslots = max(self.window, READAHEAD_BYTES // self.stride, 1)
        self.buf = bytearray(self.stride * nslots)
        self.view = memoryview(self.buf)
        self.slots = [self.view[k * self.stride + 4 : (k + 1) * self.stride] for k in range(nslots)]
        self.ra_first = 0  # first block index held in the slots (lock-step read-ahead)
        self.ra_count = 0  # how many blocks the slots hold; 0 = nothing valid
        self.ra_bytes = 0  # file bytes in those slots
        self.gso = 0  # datagrams per GSO send; 0 = one send per block
        if self.window > 1 and 2 * self.stride <= GSO_MAX_BYTES and server.gso:
            self.gso = min(GSO_MAX_SEGMENTS, GSO_MAX_BYTES // self.stride)
        self.cmsg = [(socket.SOL_UDP, UDP_SEGMENT, struct.pack("=H", self.stride))]
        self.started_at = time.monotonic()
        self.done = False
        opts: list[bytes] = []
        if req.blksize:
            opts += [b"blksize", str(bs).encode()]
        if req.tsize and size > 0:
            # NOTE: curl rejects "tsize 0" in an OACK as illegal; leaving an option out of the
            # OACK is always allowed (RFC 2347), so an empty file is sent without it.
            opts += [b"tsize", str(size).encode()]
        if req.timeout:
            opts += [b"timeout", str(int(req.timeout)).encode()]
        if req.windowsize:
            opts += [b"windowsize", str(self.window).encode()]
        self.oack = _HDR.pack(OACK, 0)[:2] + b"\0".join(opts) + b"\0" if opts else None
        loop = server.loop
        self.timer = loop.call_later(self.timeout, self._on_timer)
        loop.add_reader(sock.fileno(), self._on_readable)

    # -- sending -------------------------------------------------------------------------------
    def start(self) -> None:
        if self.oack is not None:
            self.acked = -1
            self._send(self.oack)
        else:
            self._send_window()

    def _send(self, data: bytes | memoryview) -> bool:
        try:
            self.sock.send(data)
            return True
        except (BlockingIOError, InterruptedError):
            return False  # the socket buffer is full: the retransmit timer recovers
        except OSError as exc:
            self.finish(False, f"send failed: {exc.strerror}")
            return False

    def _send_gso(self, data: memoryview) -> bool:
        """Sends several equal-size datagrams (the last may be short) in one call (UDP GSO)."""
        try:
            self.sock.sendmsg([data], self.cmsg)
            return True
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.ENOPROTOOPT, errno.EIO, errno.EOPNOTSUPP):
                # NOTE: no UDP GSO here (old kernel, device without checksum offload): stop
                # using it, server-wide, and let the retransmit path resend plainly.
                self.server.gso = False
                self.gso = 0
                return False
            self.finish(False, f"send failed: {exc.strerror}")
            return False

    def _send_window(self) -> None:
        """Sends blocks acked+1 .. min(acked+window, last)."""
        first = self.acked + 1
        count = min(self.acked + self.window, self.last) - self.acked
        self.ra_count = 0  # the slots are about to hold other blocks
        bs, stride, buf = self.blksize, self.stride, self.buf
        n = os.preadv(self.fd, self.slots[:count], (first - 1) * bs)
        for k in range(count):
            i = first + k
            o = k * stride
            buf[o], buf[o + 1], buf[o + 2], buf[o + 3] = 0, DATA, (i >> 8) & 0xFF, i & 0xFF
        # the file's bytes fill the slots in order; only the final block can be short
        total = (count - 1) * stride + 4 + (n - (count - 1) * bs)
        view = self.view
        if self.gso and count > 1:
            step = self.gso * stride
            ok = True
            for o in range(0, total, step):
                if not self._send_gso(view[o : min(total, o + step)]):
                    ok = False
                    break
        else:
            ok = True
            for k in range(count):
                o = k * stride
                if not self._send(view[o : min(total, o + stride)]):
                    ok = False
                    break
        if ok and first + count - 1 > self.sent:
            self.sent = first + count - 1
        elif not ok:
            self.sent = max(self.sent, self.acked)
        self.server.stats.bytes_sent += n

    # -- receiving -----------------------------------------------------------------------------
    def _on_readable(self) -> None:
        # One datagram per call: the selector is level-triggered and calls again while data
        # waits, and not looping saves a BlockingIOError per packet on the lock-step hot path.
        try:
            data = self.sock.recv(2048)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            # NOTE: ICMP port unreachable from a client that went away shows up here.
            self.finish(False, f"recv failed: {exc.strerror}")
            return
        if len(data) < 4 or data[0] != 0:
            return
        op = data[1]
        if op != ACK:
            if op == ERROR:
                self.finish(False, "client sent error")
            else:
                self._send(error_packet(E_ILLEGAL_OP, "unexpected opcode"))
            return
        block16 = (data[2] << 8) | data[3]
        acked = self.acked
        if (
            self.window == 1
            and acked >= 0
            and self.sent == acked + 1
            and (block16 == (acked + 1) & 0xFFFF)
        ):
            # lock-step fast path: the ACK of the block just sent; send the next one
            acked += 1
            self.acked = acked
            self.progress += 1
            if acked >= self.last:
                self.finish(True, "complete")
                return
            i = acked + 1
            bs = self.blksize
            k = i - self.ra_first
            if k >= self.ra_count:
                count = min(len(self.slots), self.last - i + 1)
                self.ra_bytes = os.preadv(self.fd, self.slots[:count], acked * bs)
                self.ra_first, self.ra_count, k = i, count, 0
            n = self.ra_bytes - k * bs
            if n > bs:
                n = bs
            o = k * self.stride
            buf = self.buf
            buf[o], buf[o + 1], buf[o + 2], buf[o + 3] = 0, DATA, (i >> 8) & 0xFF, i & 0xFF
            try:
                self.sock.send(self.view[o : o + 4 + n])
            except (BlockingIOError, InterruptedError):
                return  # the timer resends
            except OSError as exc:
                self.finish(False, f"send failed: {exc.strerror}")
                return
            self.sent = i
            self.server.stats.bytes_sent += n
            return
        self._on_ack(block16)

    def _on_ack(self, block16: int) -> None:
        delta = (block16 - self.acked) & 0xFFFF
        if delta == 0 or delta > self.sent - self.acked:
            if delta == 0 and self.window > 1 and self.sent > self.acked >= 0:
                self._send_window()  # RFC 7440: the client lost part of the window
            return  # a duplicate: ignoring it avoids the Sorcerer's Apprentice syndrome
        self.acked += delta
        self.tries = 0
        self.progress += 1
        if self.acked >= self.last:
            self.finish(True, "complete")
        else:
            self._send_window()

    def _on_timer(self) -> None:
        if self.done:
            return
        loop = self.server.loop
        if self.progress != self.seen:
            # progress since the last tick: not idle. (Idle detection has one-tick granularity:
            # a resend happens after 1 to 2 timeouts of silence.)
            self.seen = self.progress
            self.tries = 0
            self.timer = loop.call_later(self.timeout, self._on_timer)
            return
        self.tries += 1
        if self.tries > self.server.retries:
            self.finish(False, "timeout")
            return
        if self.acked < 0 and self.oack is not None:
            self._send(self.oack)
        else:
            self._send_window()
        self.timer = loop.call_later(self.timeout, self._on_timer)

    def finish(self, ok: bool, reason: str) -> None:
        if self.done:
            return
        self.done = True
        self.timer.cancel()
        srv = self.server
        try:
            srv.loop.remove_reader(self.sock.fileno())
        except (ValueError, OSError):
            pass
        self.sock.close()
        os.close(self.fd)
        srv.sessions.pop(self.peer, None)
        sent = self.size if ok else min(self.size, max(0, self.acked) * self.blksize)
        if ok:
            srv.stats.completed += 1
        else:
            srv.stats.aborted += 1
        srv.emit(
            TimelineKind.TFTP_COMPLETE if ok else TimelineKind.TFTP_ABORTED,
            self.peer,
            file=self.name,
            bytes=sent,
            size=self.size,
            reason=reason,
            seconds=round(time.monotonic() - self.started_at, 4),
        )


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
        interface: str | None = None,
    ) -> None:
        if address in ("0.0.0.0", ""):  # noqa: S104
            raise PxeError("refusing to bind the wildcard address")
        self.root = os.path.realpath(os.fspath(root))
        self.address, self.port, self.interface = address, port, interface
        self.sink = sink
        self.max_sessions, self.timeout, self.retries = max_sessions, timeout, retries
        self.max_blksize, self.max_windowsize = max_blksize, max_windowsize
        self.stats = TftpStats()
        self.gso = True  # cleared if the kernel refuses UDP_SEGMENT
        self.sessions: dict[tuple[str, int], _Session] = {}
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
        for s in list(self.sessions.values()):
            s.finish(False, "server stopping")
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

    def _on_request(self, data: bytes, peer: tuple[str, int]) -> None:
        self.stats.requests += 1
        if len(data) < 2 or data[0] != 0:
            self.stats.ignored += 1
            return  # garbage: silence
        op = data[1]
        if op == WRQ:
            self._reply_error(peer, E_ACCESS, "this server is read-only")
            self.emit(TimelineKind.TFTP_REFUSED, peer, reason="write request")
            return
        if op != RRQ:
            self._reply_error(peer, E_ILLEGAL_OP, "illegal TFTP operation")
            return
        if peer in self.sessions:
            self.stats.ignored += 1  # a retransmitted RRQ: the session already answers
            return
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
            return
        if len(self.sessions) >= self.max_sessions:
            self._reply_error(peer, E_UNDEFINED, "server busy")
            return
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            code = E_NOT_FOUND if exc.errno == errno.ENOENT else E_ACCESS
            self._reply_error(peer, code, "cannot open file")
            return
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise Refused(E_NOT_FOUND, "not a regular file")
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
        except Refused as exc:
            os.close(fd)
            self._reply_error(peer, exc.code, exc.message)
            return
        except OSError:
            os.close(fd)
            self._reply_error(peer, E_UNDEFINED, "no resources")
            return
        name = req.filename.decode("ascii")
        session = _Session(self, sock, fd, peer, name, st.st_size, req)
        self.sessions[peer] = session
        self.stats.started += 1
        self.emit(
            TimelineKind.TFTP_START,
            peer,
            file=name,
            size=st.st_size,
            blksize=session.blksize,
            windowsize=session.window,
        )
        session.start()
