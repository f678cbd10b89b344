"""DHCPv4 packet codec with the options network boot needs.

A DHCP message (RFC 2131 section 2) is a fixed 236-byte BOOTP header followed by the magic
cookie 99.130.83.99 and a list of TLV options (RFC 2132): code, length, value; code 0 is a
one-byte pad, code 255 ends the list. A code that appears several times is one long option whose
values are concatenated (RFC 3396).

Network boot adds (RFC 4578, PXE 2.1):
  60  vendor class: ``PXEClient:Arch:00007:UNDI:003000`` (or ``HTTPClient...`` for UEFI HTTP boot)
  93  client system architecture, 16-bit big endian (0 BIOS, 7/9 x86-64 UEFI, 11 ARM64, 16 HTTP)
  94  client network interface identifier (type, major, minor)
  97  client machine identifier: type 0 + 16-byte UUID
  43  vendor-specific, encapsulated sub-options (6 = PXE discovery control)
iPXE adds 77 user class ``iPXE`` and 175, an encapsulated option whose sub-option 176
(``no-pxedhcp``) = 1 tells iPXE not to wait for ProxyDHCP offers.

Parsing is strict and total: every malformed input raises `MalformedPacket`, nothing else.
"""

from __future__ import annotations

import functools
import socket
import struct
import uuid as uuidlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum

from pxe.errors import MalformedPacket

MAGIC_COOKIE = b"\x63\x82\x53\x63"
HEADER = struct.Struct("!BBBBIHH4s4s4s4s16s64s128s")  # 236 bytes
MIN_REPLY_SIZE = 300  # BOOTP minimum; some ROMs drop shorter datagrams
FLAG_BROADCAST = 0x8000


class Op(IntEnum):
    """BOOTP op code (RFC 951)."""

    BOOTREQUEST = 1
    BOOTREPLY = 2


class Opt(IntEnum):
    """Option codes used by bronze (RFC 2132, 3004, 4578, iPXE)."""

    PAD = 0
    SUBNET_MASK = 1
    ROUTER = 3
    DNS = 6
    HOSTNAME = 12
    VENDOR_SPECIFIC = 43
    REQUESTED_IP = 50
    LEASE_TIME = 51
    OVERLOAD = 52
    MESSAGE_TYPE = 53
    SERVER_ID = 54
    PARAM_REQUEST = 55
    MESSAGE = 56
    MAX_SIZE = 57
    RENEWAL_T1 = 58
    REBINDING_T2 = 59
    VENDOR_CLASS = 60
    CLIENT_ID = 61
    TFTP_SERVER = 66
    BOOTFILE = 67
    USER_CLASS = 77
    CLIENT_ARCH = 93
    CLIENT_NII = 94
    CLIENT_UUID = 97
    IPXE_ENCAP = 175
    END = 255


class IpxeOpt(IntEnum):
    """Sub-options of iPXE's option 175."""

    NO_PXEDHCP = 176
    BUS_ID = 177
    HTTP = 19
    HTTPS = 20


class PxeSubOpt(IntEnum):
    """Sub-options of option 43 for PXE clients (PXE 2.1 spec, table 2-1)."""

    DISCOVERY_CONTROL = 6
    BOOT_SERVERS = 8
    BOOT_MENU = 9
    MENU_PROMPT = 10


class MessageType(StrEnum):
    """DHCP message type, option 53 (RFC 2132 section 9.6)."""

    DISCOVER = "DISCOVER"
    """Client looks for servers (broadcast)."""
    OFFER = "OFFER"
    """Server offers an address / boot parameters."""
    REQUEST = "REQUEST"
    """Client accepts one offer, or renews."""
    DECLINE = "DECLINE"
    """Client found the offered address in use."""
    ACK = "ACK"
    """Server confirms the lease."""
    NAK = "NAK"
    """Server refuses the requested address."""
    RELEASE = "RELEASE"
    """Client gives its address back."""
    INFORM = "INFORM"
    """Client has an address and asks only for parameters."""

    @property
    def code(self) -> int:
        return _MT_CODES[self]

    @classmethod
    def from_code(cls, code: int) -> MessageType:
        try:
            return _MT_BY_CODE[code]
        except KeyError:
            raise MalformedPacket(f"unknown message type {code}") from None


_MT_CODES = {m: i for i, m in enumerate(MessageType, start=1)}
_MT_BY_CODE = {i: m for m, i in _MT_CODES.items()}


class Arch(StrEnum):
    """Client system architecture, option 93 (RFC 4578 section 2.1, IANA registry)."""

    BIOS = "bios"
    """0: x86 BIOS (legacy PXE)."""
    UEFI_IA32 = "uefi-ia32"
    """6: 32-bit x86 UEFI."""
    UEFI_X64 = "uefi-x64"
    """7 (and 9, which firmware commonly sends for x64): x86-64 UEFI."""
    UEFI_ARM32 = "uefi-arm32"
    """10: 32-bit ARM UEFI."""
    UEFI_ARM64 = "uefi-arm64"
    """11: 64-bit ARM UEFI."""
    HTTP_X64 = "http-x64"
    """16: x86-64 UEFI HTTP boot."""
    HTTP_ARM64 = "http-arm64"
    """19: ARM64 UEFI HTTP boot."""
    UNKNOWN = "unknown"
    """Any other code."""

    @classmethod
    def from_code(cls, code: int | None) -> Arch:
        if code is None:
            return cls.BIOS  # RFC 4578: a client without option 93 is a legacy BIOS client
        return _ARCH_BY_CODE.get(code, cls.UNKNOWN)


_ARCH_BY_CODE = {
    0: Arch.BIOS,
    6: Arch.UEFI_IA32,
    7: Arch.UEFI_X64,
    9: Arch.UEFI_X64,
    10: Arch.UEFI_ARM32,
    11: Arch.UEFI_ARM64,
    16: Arch.HTTP_X64,
    19: Arch.HTTP_ARM64,
}


_ZERO_IP = bytes(4)
_ZERO_QUAD = "0.0.0.0"  # noqa: S104 - an address field, not a bind


def _ip(raw: bytes) -> str:
    # Most address fields of a request are zero: skip the C call for those.
    return _ZERO_QUAD if raw == _ZERO_IP else socket.inet_ntop(socket.AF_INET, raw)


def _pack_ip(addr: str) -> bytes:
    if addr == _ZERO_QUAD:
        return _ZERO_IP
    return socket.inet_pton(socket.AF_INET, addr)  # strict dotted quad, unlike inet_aton


def parse_tlv(data: bytes, *, what: str, start: int = 0) -> dict[int, bytes]:
    """Parses pad/end-terminated TLVs (options or encapsulated sub-options) from ``start``,
    strictly."""
    out: dict[int, bytes] = {}
    i, n = start, len(data)
    while i < n:
        code = data[i]
        if code == 0:
            i += 1
            continue
        if code == 255:
            break
        if i + 1 >= n:
            raise MalformedPacket(f"{what} {code} has no length byte")
        length = data[i + 1]
        end = i + 2 + length
        if end > n:
            raise MalformedPacket(f"{what} {code} length {length} runs past the end")
        if code in out:
            out[code] += data[i + 2 : end]  # RFC 3396 concatenation
        else:
            out[code] = data[i + 2 : end]
        i = end
    return out


def _put_tlv(out: bytearray, code: int, value: bytes) -> None:
    n = len(value)
    if n <= 255:  # nearly every option: one TLV (an empty value is a zero-length TLV)
        out += bytes((code, n))
        out += value
        return
    for i in range(0, n, 255):
        chunk = value[i : i + 255]
        out += bytes((code, len(chunk)))
        out += chunk


def encode_tlv(items: Mapping[int, bytes] | Iterable[tuple[int, bytes]]) -> bytes:
    """Encodes TLVs, splitting values longer than 255 bytes (RFC 3396). No end marker."""
    pairs = items.items() if isinstance(items, Mapping) else items
    out = bytearray()
    for code, value in pairs:
        _put_tlv(out, code, value)
    return bytes(out)


@dataclass(frozen=True)
class Packet:
    """One DHCP message. Options keep their raw bytes; typed views are properties."""

    op: int
    xid: int
    chaddr: bytes
    options: Mapping[int, bytes] = field(default_factory=dict)
    htype: int = 1
    hops: int = 0
    secs: int = 0
    flags: int = 0
    ciaddr: str = "0.0.0.0"  # noqa: S104 - an address field, not a bind
    yiaddr: str = "0.0.0.0"  # noqa: S104
    siaddr: str = "0.0.0.0"  # noqa: S104
    giaddr: str = "0.0.0.0"  # noqa: S104
    sname: bytes = b""
    file: bytes = b""

    # -- typed views -------------------------------------------------------------------------
    @functools.cached_property
    def mac(self) -> str:
        return self.chaddr.hex(":")

    @functools.cached_property
    def message_type(self) -> MessageType | None:
        raw = self.options.get(Opt.MESSAGE_TYPE)
        return None if raw is None else MessageType.from_code(raw[0])

    @functools.cached_property
    def vendor_class(self) -> str | None:
        raw = self.options.get(Opt.VENDOR_CLASS)
        return None if raw is None else raw.decode("ascii", "replace")

    @property
    def user_class(self) -> bytes | None:
        return self.options.get(Opt.USER_CLASS)

    @property
    def arch_code(self) -> int | None:
        raw = self.options.get(Opt.CLIENT_ARCH)
        # RFC 4578 allows a list; the first entry is the client's own architecture
        return None if raw is None else int.from_bytes(raw[:2], "big")

    @functools.cached_property
    def arch(self) -> Arch:
        return Arch.from_code(self.arch_code)

    @functools.cached_property
    def uuid(self) -> str | None:
        raw = self.options.get(Opt.CLIENT_UUID)
        return None if raw is None else str(uuidlib.UUID(bytes_le=raw[1:17]))

    @functools.cached_property
    def is_ipxe(self) -> bool:
        """iPXE announces itself with user class ``iPXE`` and/or option 175."""
        uc = self.user_class or b""
        return Opt.IPXE_ENCAP in self.options or uc == b"iPXE" or uc[1:5] == b"iPXE"

    @property
    def requested_ip(self) -> str | None:
        raw = self.options.get(Opt.REQUESTED_IP)
        return None if raw is None else _ip(raw)

    @property
    def server_id(self) -> str | None:
        raw = self.options.get(Opt.SERVER_ID)
        return None if raw is None else _ip(raw)

    @property
    def ipxe_options(self) -> dict[int, bytes]:
        raw = self.options.get(Opt.IPXE_ENCAP)
        return {} if raw is None else parse_tlv(raw, what="iPXE sub-option")

    @property
    def pxe_options(self) -> dict[int, bytes]:
        raw = self.options.get(Opt.VENDOR_SPECIFIC)
        return {} if raw is None else parse_tlv(raw, what="PXE sub-option")


_FIXED_LENGTHS: dict[int, int] = {
    Opt.SUBNET_MASK: 4,
    Opt.MESSAGE_TYPE: 1,
    Opt.REQUESTED_IP: 4,
    Opt.SERVER_ID: 4,
    Opt.LEASE_TIME: 4,
    Opt.MAX_SIZE: 2,
    Opt.OVERLOAD: 1,
    Opt.CLIENT_NII: 3,
    Opt.CLIENT_UUID: 17,
}


def parse(data: bytes) -> Packet:
    """Decodes one datagram. Raises `MalformedPacket` for anything that is not a sound message."""
    try:
        return _parse(bytes(data))
    except MalformedPacket:
        raise
    except Exception as exc:  # noqa: BLE001 - totality: nothing else may escape
        raise MalformedPacket(f"{type(exc).__name__}: {exc}") from None


_COOKIE_END = HEADER.size + len(MAGIC_COOKIE)


def _parse(data: bytes) -> Packet:
    if len(data) < _COOKIE_END:
        raise MalformedPacket(f"truncated: {len(data)} bytes")
    (op, htype, hlen, hops, xid, secs, flags, ci, yi, si, gi, ch, sname, file) = HEADER.unpack_from(
        data
    )
    if hlen > 16:
        raise MalformedPacket(f"hlen {hlen} > 16")
    if data[HEADER.size : _COOKIE_END] != MAGIC_COOKIE:
        raise MalformedPacket("no magic cookie")
    options = parse_tlv(data, what="option", start=_COOKIE_END)
    for code, value in options.items():
        size = _FIXED_LENGTHS.get(code)
        if size is not None and len(value) != size:
            raise MalformedPacket(f"option {code} has length {len(value)}, not {size}")
    arch = options.get(Opt.CLIENT_ARCH)
    if arch is not None and (not arch or len(arch) % 2):
        raise MalformedPacket("option 93 length is not a positive multiple of 2")
    uuid = options.get(Opt.CLIENT_UUID)
    if uuid is not None and uuid[0] != 0:
        raise MalformedPacket("option 97 type is not 0 (UUID)")
    # Typed views must be total too: evaluate the ones that can fail now.
    mt = options.get(Opt.MESSAGE_TYPE)
    ipxe = options.get(Opt.IPXE_ENCAP)
    if ipxe is not None:
        parse_tlv(ipxe, what="iPXE sub-option")
    pxe = options.get(Opt.VENDOR_SPECIFIC)
    if pxe is not None:
        parse_tlv(pxe, what="PXE sub-option")
    chaddr = ch[:hlen]
    vc = options.get(Opt.VENDOR_CLASS)
    uc = options.get(Opt.USER_CLASS) or b""
    # A frozen dataclass's __init__ sets each of its 15 fields through object.__setattr__;
    # this is the one hot constructor, so it fills the instance dict in one go instead, with
    # the views every request reads (cached_property values) computed once, as those would be.
    pkt: Packet = object.__new__(Packet)
    pkt.__dict__.update(
        op=op,
        xid=xid,
        chaddr=chaddr,
        options=options,
        htype=htype,
        hops=hops,
        secs=secs,
        flags=flags,
        ciaddr=_ip(ci),
        yiaddr=_ip(yi),
        siaddr=_ip(si),
        giaddr=_ip(gi),
        sname=sname.split(b"\0", 1)[0],
        file=file.split(b"\0", 1)[0],
        mac=chaddr.hex(":"),
        message_type=None if mt is None else MessageType.from_code(mt[0]),
        vendor_class=None if vc is None else vc.decode("ascii", "replace"),
        arch=Arch.from_code(None if arch is None else int.from_bytes(arch[:2], "big")),
        is_ipxe=ipxe is not None or uc == b"iPXE" or uc[1:5] == b"iPXE",
        uuid=None if uuid is None else str(uuidlib.UUID(bytes_le=uuid[1:17])),
    )
    return pkt


def encode(pkt: Packet) -> bytes:
    """Encodes a message: message type and server id first, end marker, padded to 300 bytes."""
    if len(pkt.chaddr) > 16 or len(pkt.sname) > 63 or len(pkt.file) > 127:
        raise ValueError("chaddr/sname/file too long")
    out = bytearray(
        HEADER.pack(
            pkt.op,
            pkt.htype,
            len(pkt.chaddr),
            pkt.hops,
            pkt.xid,
            pkt.secs,
            pkt.flags,
            _pack_ip(pkt.ciaddr),
            _pack_ip(pkt.yiaddr),
            _pack_ip(pkt.siaddr),
            _pack_ip(pkt.giaddr),
            pkt.chaddr,
            pkt.sname,
            pkt.file,
        )
    )
    out += MAGIC_COOKIE
    opts = pkt.options
    for first in _FIRST:
        value = opts.get(first)
        if value is not None:
            _put_tlv(out, first, value)
    for code, value in opts.items():
        if code in _FIRST:
            continue
        if len(value) <= 255:  # _put_tlv inlined: a reply has ~8 options
            out += bytes((code, len(value)))
            out += value
        else:
            _put_tlv(out, code, value)
    out += b"\xff"
    if len(out) < MIN_REPLY_SIZE:
        out += bytes(MIN_REPLY_SIZE - len(out))
    return bytes(out)


_FIRST = (Opt.MESSAGE_TYPE, Opt.SERVER_ID)


def mac_bytes(mac: str) -> bytes:
    """``aa:bb:cc:dd:ee:ff`` (or with dashes) to 6 bytes."""
    return bytes.fromhex(mac.replace(":", "").replace("-", ""))


def uuid_option(value: str) -> bytes:
    """Option 97 value for a UUID string (type 0, then the GUID in its wire byte order)."""
    return b"\0" + uuidlib.UUID(value).bytes_le
