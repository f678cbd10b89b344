"""DHCP codec: round trips, PXE/iPXE views, and every malformed shape raising MalformedPacket."""
# ruff: noqa: S311

from __future__ import annotations

import random

import pytest

from pxe.dhcp.packet import (
    HEADER,
    MAGIC_COOKIE,
    Arch,
    MessageType,
    Opt,
    encode_tlv,
    parse,
)
from pxe.errors import MalformedPacket
from tests.support.pxe import pxe_request

UUID = "8a3b4c5d-1e2f-4a5b-8c9d-0e1f2a3b4c5d"


def test_round_trip_pxe_discover() -> None:
    pkt = parse(pxe_request(arch=7, uuid=UUID, ipxe=True))
    assert pkt.mac == "52:54:00:00:00:01"
    assert pkt.message_type is MessageType.DISCOVER
    assert pkt.arch is Arch.UEFI_X64
    assert pkt.uuid == UUID
    assert pkt.is_ipxe
    assert pkt.ipxe_options == {177: b"\x01"}
    assert pkt.vendor_class == "PXEClient:Arch:00000:UNDI:002001"
    assert pkt.giaddr == "127.0.0.1"


@pytest.mark.parametrize(
    ("code", "arch"),
    [
        (None, Arch.BIOS),
        (0, Arch.BIOS),
        (6, Arch.UEFI_IA32),
        (7, Arch.UEFI_X64),
        (9, Arch.UEFI_X64),
        (11, Arch.UEFI_ARM64),
        (16, Arch.HTTP_X64),
        (19, Arch.HTTP_ARM64),
        (4242, Arch.UNKNOWN),
    ],
    ids=lambda v: str(v),
)
def test_arch_codes(code: int | None, arch: Arch) -> None:
    assert Arch.from_code(code) is arch


def test_long_option_is_split_and_concatenated() -> None:
    value = bytes(range(256)) * 2
    raw = pxe_request(extra={Opt.BOOTFILE: value})
    assert parse(raw).options[Opt.BOOTFILE] == value


def _base() -> bytearray:
    return bytearray(pxe_request())


def _cut(n: int) -> bytes:
    return bytes(_base()[:n])


def _set(offset: int, value: bytes) -> bytes:
    b = _base()
    b[offset : offset + len(value)] = value
    return bytes(b)


OPTS = HEADER.size + 4
MALFORMED = {
    "empty": b"",
    "one_byte": b"\x01",
    "truncated_header": _cut(100),
    "header_no_cookie": _cut(HEADER.size),
    "no_magic_cookie": _set(HEADER.size, b"\0\0\0\0"),
    "hlen_17": _set(2, b"\x11"),
    "hlen_255": _set(2, b"\xff"),
    "option_length_past_end": bytes(_base()[:OPTS]) + bytes((Opt.MESSAGE_TYPE, 1, 1, 60, 200, 65)),
    "option_without_length": bytes(_base()[:OPTS]) + bytes((53, 1, 1, 60)),
    "message_type_len_2": bytes(_base()[:OPTS]) + bytes((53, 2, 1, 1, 255)),
    "message_type_99": bytes(_base()[:OPTS]) + bytes((53, 1, 99, 255)),
    "arch_odd_length": bytes(_base()[:OPTS]) + bytes((53, 1, 1, 93, 3, 0, 0, 0, 255)),
    "arch_empty": bytes(_base()[:OPTS]) + bytes((53, 1, 1, 93, 0, 255)),
    "uuid_short": bytes(_base()[:OPTS]) + bytes((53, 1, 1, 97, 5, 0, 1, 2, 3, 4, 255)),
    "uuid_type_1": bytes(_base()[:OPTS]) + bytes((53, 1, 1, 97, 17, 1)) + b"\0" * 16 + b"\xff",
    "server_id_len_3": bytes(_base()[:OPTS]) + bytes((53, 1, 1, 54, 3, 1, 2, 3, 255)),
    "ipxe_suboption_past_end": bytes(_base()[:OPTS]) + bytes((53, 1, 1, 175, 3, 176, 9, 1, 255)),
    "pxe_suboption_past_end": bytes(_base()[:OPTS]) + bytes((53, 1, 1, 43, 2, 6, 5, 255)),
}


@pytest.mark.parametrize("raw", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_raises_only_malformed_packet(raw: bytes) -> None:
    with pytest.raises(MalformedPacket):
        parse(raw)


def test_parse_is_total_on_random_bytes() -> None:
    rng = random.Random(7)
    base = pxe_request(arch=7, uuid=UUID, ipxe=True)
    for _ in range(3000):
        b = bytearray(base)
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        data = bytes(b[: rng.randint(0, len(b))]) if rng.random() < 0.3 else bytes(b)
        try:
            pkt = parse(data)
            _ = (
                pkt.mac,
                pkt.uuid,
                pkt.arch,
                pkt.vendor_class,
                pkt.is_ipxe,
                pkt.server_id,
                pkt.requested_ip,
            )
        except MalformedPacket:
            pass


def test_end_marker_optional_and_pad_skipped() -> None:
    raw = bytes(_base()[: HEADER.size]) + MAGIC_COOKIE + b"\0\0" + encode_tlv({53: b"\x01"})
    assert parse(raw).message_type is MessageType.DISCOVER
