"""One TFTP read transfer (see `pxe.tftp.server` for the protocol and the limits)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import struct
import threading
import time
from typing import TYPE_CHECKING

from pxe.backend import TimelineKind
from pxe.tftp import lockstep
from pxe.tftp.packets import _HDR, ACK, DATA, E_ILLEGAL_OP, ERROR, OACK, Request, error_packet

if TYPE_CHECKING:
    from pxe.tftp.server import TftpServer

UDP_SEGMENT = 103  # linux/udp.h: UDP generic segmentation offload (Linux >= 4.18)
GSO_MAX_BYTES = 65000  # one send() carries at most ~64 KiB ...
GSO_MAX_SEGMENTS = 64  # ... and at most 64 datagrams
READAHEAD_BYTES = 65536  # per lock-step thread: `max_threads` (64) of them cost at most ~4 MiB


class Session:
    """One read transfer: a connected socket, the file, and the window state.

    Block `i` (1-based) holds file bytes [(i-1)*blksize, i*blksize). `acked` is the highest block
    the client acknowledged (-1 while an OACK awaits its ACK 0), `sent` the highest block sent.
    Lock-step transfers run on their own thread (`pxe.tftp.lockstep`) while the server has
    threads to spare; the rest run on the event loop here. Windows of several blocks are read
    with one preadv into per-block slots behind prewritten headers and, where the kernel allows,
    sent with one send() using UDP GSO (UDP_SEGMENT).
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
        "thread",
        "lock",
        "sent_bytes",
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
        self.buf = bytearray()  # slots for the blocks in flight, sized by start()
        self.view = memoryview(self.buf)
        self.slots: list[memoryview] = []
        self.thread: threading.Thread | None = None
        self.lock = threading.Lock()  # lock-step thread: its socket's close vs our shutdown
        self.sent_bytes = 0  # lock-step thread: file bytes sent, added to the stats at the end
        self.timer: asyncio.TimerHandle | None = None
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

    # -- sending -------------------------------------------------------------------------------
    def start(self, threaded: bool) -> None:
        """Starts sending: on a thread of its own (lock-step only), or on the event loop.

        A lock-step thread reads READAHEAD_BYTES of blocks at once and sends them one per ACK;
        on the loop a window's blocks are read at once.
        """
        nslots = max(1, READAHEAD_BYTES // self.stride) if threaded else self.window
        self.buf = bytearray(self.stride * nslots)
        self.view = memoryview(self.buf)
        self.slots = [self.view[k * self.stride + 4 : (k + 1) * self.stride] for k in range(nslots)]
        if threaded:
            assert self.window == 1
            self.thread = threading.Thread(
                target=lockstep.run, args=(self,), name=f"tftp-{self.peer[0]}", daemon=True
            )
            self.thread.start()
            return
        loop = self.server.loop
        self.timer = loop.call_later(self.timeout, self._on_timer)
        loop.add_reader(self.sock.fileno(), self._on_readable)
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
        # waits, and not looping saves a BlockingIOError per packet.
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
        """Ends the session (on the event loop). A lock-step thread closes its own socket and
        file; here it is only woken (server stopping) and its byte count is taken."""
        if self.done:
            return
        self.done = True
        srv = self.server
        if self.thread is not None:
            with self.lock, contextlib.suppress(OSError):
                if self.sock.fileno() != -1:
                    self.sock.shutdown(socket.SHUT_RDWR)  # wakes the thread's recv
            srv.threads -= 1
            srv.stats.bytes_sent += self.sent_bytes
        else:
            if self.timer is not None:
                self.timer.cancel()
            try:
                srv.loop.remove_reader(self.sock.fileno())
            except (ValueError, OSError):
                pass
            self.sock.close()
            os.close(self.fd)
        srv.session_closed(self.peer)
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
