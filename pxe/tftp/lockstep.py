"""Lock-step transfers (windowsize 1, what PXE ROMs, iPXE and curl ask for) on their own thread.

Why a thread: a lock-step block costs one send and one receive, and the client cannot send its
next ACK before our DATA arrives, so the round trip is the speed. On the event loop each block
also pays an epoll wait and the loop's callback machinery (~15% slower than tftpd-hpa pinned to
one CPU); a thread that blocks in `recv` with `SO_RCVTIMEO` pays two system calls per block and
runs a few lines of Python. The GIL is released in every system call, so the event loop (and
other transfers) keep running.

Ownership: the thread owns the session's file descriptor and closes it and the socket when it
ends (under `Session.lock`), then asks the loop to run `Session.finish`. `finish` on the loop
(server stopping) only shuts the socket down, which wakes the blocked `recv`.

The hardening of the loop path holds here: a block that is never acknowledged is sent at most
1 + retries times, duplicate ACKs are ignored (no Sorcerer's Apprentice), stray packets do not
extend the deadline, an ERROR from the client ends the transfer.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import time
from typing import TYPE_CHECKING

from pxe.tftp.packets import ACK, DATA, E_ILLEGAL_OP, ERROR, error_packet

if TYPE_CHECKING:
    from pxe.tftp.session import Session

log = logging.getLogger(__name__)
_BLOCK = struct.Struct("!H")


def run(session: Session) -> None:
    """Thread body: transfers the file, closes it, then reports to the loop."""
    try:
        ok, reason = _transfer(session)
    except OSError as exc:
        # NOTE: ICMP port unreachable from a client that went away shows up here.
        ok, reason = False, f"transfer failed: {exc.strerror}"
        if session.done:
            reason = "server stopping"  # finish() shut the socket down
    except Exception:  # noqa: BLE001 - a bug must end this transfer, not leak the thread
        log.exception("tftp lock-step transfer crashed peer=%s", session.peer)
        ok, reason = False, "internal error"
    finally:
        with session.lock:
            session.sock.close()
            os.close(session.fd)
    try:
        session.server.loop.call_soon_threadsafe(session.finish, ok, reason)
    except RuntimeError:
        pass  # the loop is closed: the server is gone


def _transfer(s: Session) -> tuple[bool, str]:
    sock, bs, stride, buf, view = s.sock, s.blksize, s.stride, s.buf, s.view
    sock.setblocking(True)
    tv = struct.pack("ll", int(s.timeout), int((s.timeout % 1) * 1_000_000))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)
    ack = bytearray(1024)
    if s.oack is not None:
        s.acked = -1
        sock.send(s.oack)
        if (why := _wait(s, s.oack, 0, ack, -2)) is not None:
            return False, why
        s.acked = 0
    nslots = len(s.slots)
    for k in range(nslots):
        buf[k * stride + 1] = DATA
    full = [view[k * stride : (k + 1) * stride] for k in range(nslots)]
    # os.write/os.readv on the socket's descriptor: the same send/recv system calls with
    # cheaper argument handling than the socket methods (~0.2 us of a ~5 us round trip)
    write, readv, pack_into, preadv = os.write, os.readv, _BLOCK.pack_into, os.preadv
    fd, sfd, last, acks = s.fd, sock.fileno(), s.last, [ack]
    i = 1
    while True:
        # read ahead up to len(slots) blocks with one preadv, then send them one per ACK
        count = min(nslots, last - i + 1)
        left = preadv(fd, s.slots[:count], (i - 1) * bs)
        s.sent_bytes += left
        s.acked = i - 1
        for k in range(count):
            block = i & 0xFFFF
            pack_into(buf, k * stride + 2, block)
            packet = full[k] if left >= bs else view[k * stride : k * stride + 4 + left]
            # the hot path: one send, one blocking recv, the expected ACK
            try:
                write(sfd, packet)
                n = readv(sfd, acks)
            except BlockingIOError:  # SO_RCVTIMEO (or SO_SNDTIMEO) elapsed
                n = -1
            if n < 4 or ack[1] != ACK or ack[0] or (ack[2] << 8 | ack[3]) != block:
                if (why := _wait(s, packet, block, ack, n)) is not None:
                    return False, why
            if i == last:
                s.acked = i
                return True, "complete"
            left -= bs
            i += 1


def _wait(s: Session, packet: bytes | memoryview, block: int, ack: bytearray, n: int) -> str | None:
    """The slow path: `packet` was sent and `n` bytes (-1: none before the timeout, -2: not
    read yet) arrived in `ack` that were not ACK `block`. Waits, resending on timeouts, until
    ACK `block` arrives; returns None, or why the transfer ends."""
    sock = s.sock
    tries = 0
    deadline = 0.0  # set on the first stray packet: stray packets do not extend the wait
    while True:
        if n == -2:
            try:
                n = sock.recv_into(ack)
            except BlockingIOError:  # SO_RCVTIMEO elapsed
                n = -1
        if s.done:
            return "server stopping"
        if n >= 4 and ack[0] == 0 and ack[1] == ACK and (ack[2] << 8 | ack[3]) == block:
            return None
        if n >= 4 and ack[0] == 0:
            if ack[1] == ERROR:
                return "client sent error"
            if ack[1] != ACK:
                sock.send(error_packet(E_ILLEGAL_OP, "unexpected opcode"))
        n, stray = -2, n >= 0
        if stray:
            # a stray or duplicate packet: ignored (no Sorcerer's Apprentice)
            now = time.monotonic()
            if deadline == 0.0:
                deadline = now + s.timeout
            if now < deadline:
                continue
        tries += 1
        if tries > s.server.retries:
            return "timeout"
        deadline = 0.0
        sock.send(packet)
        s.sent_bytes += len(packet) - 4
