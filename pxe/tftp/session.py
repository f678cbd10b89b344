"""One TFTP read transfer (see `pxe.tftp.server` for the protocol and the limits)."""

from __future__ import annotations

import errno
import os
import socket
import struct
import time
from typing import TYPE_CHECKING

from pxe.backend import TimelineKind
from pxe.tftp.packets import _HDR, ACK, DATA, E_ILLEGAL_OP, ERROR, OACK, Request, error_packet

if TYPE_CHECKING:
    from pxe.tftp.server import TftpServer

UDP_SEGMENT = 103  # linux/udp.h: UDP generic segmentation offload (Linux >= 4.18)
GSO_MAX_BYTES = 65000  # one send() carries at most ~64 KiB ...
GSO_MAX_SEGMENTS = 64  # ... and at most 64 datagrams
READAHEAD_BYTES = 16384  # per lock-step session: 1,000 sessions cost at most ~16 MiB


class Session:
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
