"""TFTP packets: opcodes, error codes, the RRQ parser and error packets (RFC 1350, 2347-2349,
7440). The parser is strict about structure and lenient about option values: an invalid value
is ignored, as RFC 2347 allows, never an exception other than `Refused`."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pxe.tftp.paths import Refused

RRQ, WRQ, DATA, ACK, ERROR, OACK = 1, 2, 3, 4, 5, 6
E_UNDEFINED, E_NOT_FOUND, E_ACCESS, E_ILLEGAL_OP, E_UNKNOWN_TID, E_OPTION = 0, 1, 2, 4, 5, 8
MAX_BLKSIZE = 65464
_HDR = struct.Struct("!HH")


def error_packet(code: int, message: str) -> bytes:
    return _HDR.pack(ERROR, code) + message.encode("ascii", "replace")[:200] + b"\0"


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
