"""Pure DHCP decisions, by table (tinkerbell smee dhcp_test.go style)."""

from __future__ import annotations

import pytest

from pxe.dhcp.decide import (
    BootConfig,
    BootFiles,
    BootTarget,
    ClientKind,
    Drop,
    Mode,
    boot_target,
    screen,
)
from pxe.dhcp.packet import Op, Opt, Packet, encode, parse
from tests.support.pxe import pxe_request

CFG = BootConfig(server_ip="10.0.0.1", http_base_url="http://10.0.0.1:8080")
ARM = BootConfig(
    server_ip="10.0.0.1",
    http_base_url="http://10.0.0.1:8080",
    files=BootFiles(uefi_arm64="ipxe-arm64.efi", uefi_x64="ipxe.efi"),
)


def req(**kw: object) -> Packet:
    return parse(pxe_request(**kw))  # type: ignore[arg-type]


def reply_op() -> Packet:
    p = req()
    return parse(encode(Packet(op=Op.BOOTREPLY, xid=1, chaddr=p.chaddr, options=p.options)))


def op(n: int) -> Packet:
    p = req()
    return parse(encode(Packet(op=n, xid=1, chaddr=p.chaddr, options=p.options)))


SCREEN = [
    ("pxe_discover_proxy", req(), Mode.PROXY, False, None),
    ("http_client_proxy", req(vendor=b"HTTPClient:Arch:00016", arch=16), Mode.PROXY, False, None),
    ("bootreply_dropped", reply_op(), Mode.PROXY, False, Drop.NOT_REQUEST),
    ("unknown_op_dropped", op(7), Mode.FULL, False, Drop.NOT_REQUEST),
    ("non_pxe_proxy", req(vendor=b"MSFT 5.0"), Mode.PROXY, False, Drop.NOT_PXE),
    ("no_vendor_proxy", req(vendor=None), Mode.PROXY, False, Drop.NOT_PXE),
    ("non_pxe_full_answered", req(vendor=None), Mode.FULL, False, None),
    ("request_on_67_proxy", req(mtype=3), Mode.PROXY, False, Drop.WRONG_MESSAGE_TYPE),
    ("request_on_4011", req(mtype=3), Mode.PROXY, True, None),
    ("discover_on_4011", req(mtype=1), Mode.PROXY, True, Drop.WRONG_MESSAGE_TYPE),
    ("non_pxe_on_4011", req(mtype=3, vendor=None), Mode.PROXY, True, Drop.NOT_PXE),
    ("offer_from_client_full", req(mtype=2), Mode.FULL, False, Drop.WRONG_MESSAGE_TYPE),
    ("release_full", req(mtype=7), Mode.FULL, False, None),
    (
        "bootp_no_type",
        parse(encode(Packet(op=1, xid=1, chaddr=b"\1" * 6))),
        Mode.FULL,
        False,
        Drop.NO_MESSAGE_TYPE,
    ),
]


@pytest.mark.parametrize(
    ("pkt", "mode", "port4011", "want"), [s[1:] for s in SCREEN], ids=[s[0] for s in SCREEN]
)
def test_screen(pkt: Packet, mode: Mode, port4011: bool, want: Drop | None) -> None:
    assert screen(pkt, mode, port4011=port4011) == want


SCRIPT = "http://10.0.0.1:8080/boot.ipxe?mac=52%3A54%3A00%3A00%3A00%3A01"
TARGETS = [
    (
        "bios",
        CFG,
        req(arch=0),
        BootTarget("undionly.kpxe", "10.0.0.1", "PXEClient", ClientKind.PXE),
    ),
    (
        "no_arch_is_bios",
        CFG,
        req(arch=None),
        BootTarget("undionly.kpxe", "10.0.0.1", "PXEClient", ClientKind.PXE),
    ),
    (
        "uefi_x64_7",
        CFG,
        req(arch=7),
        BootTarget("snponly.efi", "10.0.0.1", "PXEClient", ClientKind.PXE),
    ),
    (
        "uefi_x64_9",
        CFG,
        req(arch=9),
        BootTarget("snponly.efi", "10.0.0.1", "PXEClient", ClientKind.PXE),
    ),
    (
        "uefi_x64_ipxe_efi",
        ARM,
        req(arch=7),
        BootTarget("ipxe.efi", "10.0.0.1", "PXEClient", ClientKind.PXE),
    ),
    ("arm64_unconfigured", CFG, req(arch=11), Drop.UNSUPPORTED_ARCH),
    (
        "arm64_configured",
        ARM,
        req(arch=11),
        BootTarget("ipxe-arm64.efi", "10.0.0.1", "PXEClient", ClientKind.PXE),
    ),
    ("ia32_unsupported", CFG, req(arch=6), Drop.UNSUPPORTED_ARCH),
    (
        "http_boot_x64",
        CFG,
        req(arch=16, vendor=b"HTTPClient:Arch:00016:UNDI:003000"),
        BootTarget("http://10.0.0.1:8080/ipxe.efi", None, "HTTPClient", ClientKind.HTTP),
    ),
    ("http_boot_arm64", CFG, req(arch=19, vendor=b"HTTPClient:Arch:00019"), Drop.UNSUPPORTED_ARCH),
    (
        "ipxe_bios",
        CFG,
        req(arch=0, ipxe=True),
        BootTarget(SCRIPT + "&arch=bios&boot=00001234", None, "PXEClient", ClientKind.IPXE),
    ),
    (
        "ipxe_uefi",
        CFG,
        req(arch=7, ipxe=True),
        BootTarget(SCRIPT + "&arch=uefi-x64&boot=00001234", None, "PXEClient", ClientKind.IPXE),
    ),
    (
        "ipxe_only_175",
        CFG,
        req(arch=0, extra={Opt.IPXE_ENCAP: b"\xb1\x01\x01"}),
        BootTarget(SCRIPT + "&arch=bios&boot=00001234", None, "PXEClient", ClientKind.IPXE),
    ),
    (
        "ipxe_uuid",
        CFG,
        req(arch=0, ipxe=True, uuid="8a3b4c5d-1e2f-4a5b-8c9d-0e1f2a3b4c5d"),
        BootTarget(
            SCRIPT + "&arch=bios&uuid=8a3b4c5d-1e2f-4a5b-8c9d-0e1f2a3b4c5d&boot=00001234",
            None,
            "PXEClient",
            ClientKind.IPXE,
        ),
    ),
    ("not_a_boot_client", CFG, req(vendor=b"udhcp 1.35"), Drop.NOT_PXE),
]


@pytest.mark.parametrize(
    ("cfg", "pkt", "want"), [t[1:] for t in TARGETS], ids=[t[0] for t in TARGETS]
)
def test_boot_target(cfg: BootConfig, pkt: Packet, want: BootTarget | Drop) -> None:
    assert boot_target(pkt, cfg) == want
